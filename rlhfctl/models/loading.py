"""Model and tokenizer loading shared by every stage (SFT, RM, PPO) and by ``rm eval``/``rm score``/``ppo sample``.

- Tokenizers: the pad token stays distinct from EOS when the tokenizer has one (or when ``add_pad_token`` asks to
  add one); otherwise pad falls back to EOS — harmless here because scores and masks come from the attention
  mask, never from comparing ids with ``pad_token_id``.
- Models: ``trust_remote_code`` only when the config turns it on; fp32 on CPU; transformers' progress bars and
  load reports are silenced (errors still raise). The tanh-approximate GELU that GPT-2-style configs name
  ``gelu_new``/``gelu_fast`` (computed by transformers as ~8 separate tensor ops) runs as PyTorch's one fused
  kernel of the same formula (:func:`use_fused_activations`).
- Missing or unreadable models become a :class:`UserError` naming the source (exit 2).
- :func:`disable_dropout` (RM and PPO train without dropout), :func:`ensure_distinct_pad_token` (PPO's policy
  tokenizer), :func:`check_same_vocabulary` (a reward model must know every id of the policy's tokenizer).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rlhfctl.errors import UserError
from rlhfctl.models.adapters import is_adapter_folder
from rlhfctl.models.transformers_startup import remember_model_folder_scans

PAD_TOKEN = "<|pad|>"


def quiet_transformers() -> None:
    """Silence transformers' info logs and progress bars (warnings that matter are errors here anyway). Called
    before transformers is first imported, it also has transformers read its model folders once instead of twice
    (:mod:`rlhfctl.models.transformers_startup`)."""
    remember_model_folder_scans()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def explain_load_error(what: str, source: str | Path, exc: Exception) -> UserError:
    local = Path(str(source)).expanduser()
    if local.exists():
        detail = f"{local} exists but could not be loaded as a {what}: {exc}"
        hint = "Point general.* at a folder written by save_pretrained (config.json, weights, tokenizer files)."
    else:
        detail = f"cannot load the {what} {str(source)!r}: no such local folder, and the hub is unreachable or has no such id ({type(exc).__name__})"
        hint = "Use a local folder (e.g. `rlhfctl example models DIR`) or a hub id that is cached on this machine."
    return UserError(detail, hint=hint)


def load_tokenizer(source: str | Path, *, trust_remote_code: bool = False, padding_side: str = "right",
                   add_pad_token: bool = False):
    """``AutoTokenizer.from_pretrained`` with a usable pad token.

    Without a pad token: ``add_pad_token=True`` adds ``<|pad|>`` (then call :func:`resize_embeddings`), otherwise
    EOS is used as pad. A tokenizer with neither pad nor EOS is refused.
    """
    quiet_transformers()
    from transformers import AutoTokenizer

    if is_adapter_folder(source) and not (Path(str(source)).expanduser() / "tokenizer_config.json").is_file():
        from rlhfctl.models.adapters import adapter_base

        source = adapter_base(source)  # an adapter folder without a tokenizer of its own: the base's
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise explain_load_error("tokenizer", source, exc) from None
    if tokenizer.pad_token is None:
        if add_pad_token:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise UserError(f"the tokenizer of {source} has neither a pad nor an EOS token",
                            hint="Use a tokenizer that defines eos_token (and ideally pad_token).")
    if tokenizer.eos_token is None:
        raise UserError(f"the tokenizer of {source} has no EOS token; rlhfctl appends EOS to every response",
                        hint="Use a tokenizer that defines eos_token.")
    tokenizer.padding_side = padding_side
    return tokenizer


def load_model(auto_class: str, source: str | Path, *, trust_remote_code: bool = False, **kwargs: Any):
    """``transformers.<auto_class>.from_pretrained(source)`` in fp32 (unless ``dtype`` is given), quietly.

    ``source`` may also be a peft adapter folder (an export with ``lora.merge_on_export = false``): its base is
    loaded and the adapter merged in.
    """
    quiet_transformers()
    import torch
    import transformers

    from rlhfctl.training import collector

    loader = {"AutoModelForCausalLM": transformers.AutoModelForCausalLM,
              "AutoModelForSequenceClassification": transformers.AutoModelForSequenceClassification}[auto_class]
    kwargs.setdefault("dtype", torch.float32)
    try:
        if is_adapter_folder(source):  # a stage exported with lora.merge_on_export = false: base + adapter, merged
            from rlhfctl.models.adapters import load_adapter_folder

            loaded = load_adapter_folder(loader, source, trust_remote_code=trust_remote_code, **kwargs)
        else:
            model_class(auto_class, source, trust_remote_code=trust_remote_code)  # imports the model's code
            collector.imports_done()  # a single-process run's start-up: imports frozen without a collector pass
            loaded = loader.from_pretrained(str(source), trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        raise explain_load_error("model", source, exc) from None
    use_fused_activations(loaded[0] if isinstance(loaded, tuple) else loaded)  # output_loading_info gives a tuple
    return loaded


def model_class(auto_class: str, source: str | Path, *, trust_remote_code: bool = False) -> type | None:
    """The class ``transformers.<auto_class>.from_pretrained(source)`` builds, its module imported (what
    ``from_pretrained`` does first), for a local model folder; ``None`` for a hub id (no second look-up) or where
    transformers' own table does not name it (remote code, an unreadable config: ``from_pretrained`` then imports
    and reports as usual). Reads only ``config.json``."""
    import transformers

    if not (Path(str(source)).expanduser() / "config.json").is_file():
        return None

    mapping = {"AutoModelForCausalLM": transformers.MODEL_FOR_CAUSAL_LM_MAPPING,
               "AutoModelForSequenceClassification": transformers.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING}
    try:
        config = transformers.AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
        return mapping[auto_class][type(config)]
    except (OSError, ValueError, KeyError):
        return None


def use_fused_activations(model) -> int:
    """Swap transformers' op-by-op tanh-GELU modules for ``GELUTanh`` (``F.gelu(approximate="tanh")``).

    ``gelu_new`` and ``gelu_fast`` compute ``0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`` with one kernel per
    operation, forward and backward; PyTorch's ``approximate="tanh"`` GELU is that same formula in one kernel
    (agrees to 4e-16 in fp64, one fp32 rounding step in fp32). It was a quarter of a training step of the
    benchmark's 14.6 M-parameter GPT-2 on CPU. Modules have no weights, so saving and exports are unchanged
    (the config still names ``gelu_new``). Returns how many modules were swapped.
    """
    from transformers import activations

    fused = getattr(activations, "GELUTanh", None) or getattr(activations, "PytorchGELUTanh", None)  # 5.x / 4.x
    if fused is None:
        return 0
    same_formula = (activations.NewGELUActivation, activations.FastGELUActivation)
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) in same_formula:
                setattr(parent, name, fused())
                swapped += 1
    return swapped


def resize_embeddings(model, tokenizer) -> None:
    """Grow the embedding matrix when the tokenizer gained tokens (e.g. an added pad token)."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id


def load_reward_model(source: str | Path, tokenizer, *, trust_remote_code: bool = False):
    """A scalar-head ``AutoModelForSequenceClassification`` (a new head when ``source`` is a causal LM)."""
    model = load_model("AutoModelForSequenceClassification", source, trust_remote_code=trust_remote_code,
                       num_labels=1)
    resize_embeddings(model, tokenizer)
    return model


def ensure_distinct_pad_token(tokenizer: Any) -> bool:
    """Give ``tokenizer`` a pad token different from EOS; returns True when a new token was added.

    Uses the unknown token when there is one (no new embedding), otherwise adds ``<|pad|>``. Masks never depend on
    the pad id anyway (they come from stop positions and explicit attention masks); a distinct pad keeps exported
    models unambiguous for other tools.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
        return False
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return True


def check_same_vocabulary(tokenizer: Any, reward_model: Any, reward_source: str) -> None:
    """The reward model reads the policy's token ids, so it must know every one of them (else UserError)."""
    rows = reward_model.get_input_embeddings().num_embeddings
    if rows < len(tokenizer):
        raise UserError(
            f"the reward model {reward_source} has {rows} token embeddings but the policy's tokenizer has "
            f"{len(tokenizer)} tokens: policy and reward model must share a tokenizer.",
            hint="Train the reward model from the same base model as the policy (rlhfctl rm train).",
        )


def disable_dropout(model: Any) -> None:
    """Dropout off everywhere: ``nn.Dropout`` modules (p = 0), the float dropout rates attention layers read at
    run time (``attention_dropout``, ``dropout``) and those of the model config (so the export says so too).

    RM and PPO train deterministically; SFT keeps the model's own dropout.
    """
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)  # a plain torch module has none
    for name, value in list(vars(config).items() if config is not None else ()):
        if "dropout" in name and isinstance(value, float):
            setattr(config, name, 0.0)
