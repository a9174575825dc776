"""LoRA adapters (peft) and gradient checkpointing: what every stage does to a model it trains.

One call per trained model, in every recipe (SFT, RM, PPO, and the stages written later)::

    model = adapt_for_training(model, config, source=config.general.base_model)               # causal LM
    model = adapt_for_training(model, config, source=..., score_head=True)                    # reward / value model

- ``config.lora`` set: peft LoRA adapters on ``lora.target_modules`` (``"all-linear"``: every linear layer but the
  output head); the base weights are frozen; a reward or value model's score head is a peft ``modules_to_save``
  copy, trained in full; each adapted ``nn.Linear`` adds its scaled adapter output into the base output in place
  (peft's values and gradients bit for bit, two output-sized temporaries fewer). The model returned is the same
  transformers object with the adapters injected in place, so everything that reaches into it
  (``model.base_model``, the final block of :mod:`rlhfctl.models.last_position`, packing, ``generate``) works
  unchanged; the peft wrapper stays reachable for the export (:func:`export_adapted`).
- ``config.training.gradient_checkpointing``: transformers' non-reentrant activation checkpointing (a frozen base
  needs no input gradients with it). The last-position shortcut runs the final block itself, unchecked.
- Weights stay fp32 whatever ``training.mixed_precision`` says (autocast computes in bf16/fp16), so adapters and
  their optimizer state are fp32.

One copy of a base serves two models (PPO): :class:`WithoutAdapters` calls an adapted model with its adapters off
(the policy's frozen base = the reference policy), and :func:`adapters_disabled` is the same switch as a context
(the reward model's base and head = the value model's, adapters off). :func:`adapters_merged` is the other way
round: the adapted model at its base's speed for inference (PPO's sampling), its base weights restored bitwise.

Exports: merged full weights (``lora.merge_on_export = true``, loads in plain transformers) or the adapter folder
(``adapter_config.json`` naming the base + ``adapter_model.safetensors``, loads with plain peft);
:func:`load_adapter_folder` reads such a folder back as a model source (merged into its base).
"""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhfctl.errors import UserError

ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft's names: an adapter folder
_PEFT_WRAPPER = "_rlhfctl_peft_model"  # the PeftModel around an adapted model, kept out of its modules


# ----------------------------------------------------------------------------------------------- training setup


def adapt_for_training(model, config, *, source: str, score_head: bool = False):
    """Gradient checkpointing and LoRA adapters as ``config`` asks (``config.training.gradient_checkpointing``,
    ``config.lora``); returns ``model`` (the same object) ready to train. ``score_head``: a reward or value model,
    whose score head is trained in full. ``source`` names the model in errors."""
    if config.training.gradient_checkpointing:
        enable_gradient_checkpointing(model, source)
    if config.lora is not None:
        add_lora(model, config.lora, source=source, score_head=score_head)
    return model


def enable_gradient_checkpointing(model, source: str) -> None:
    """Non-reentrant activation checkpointing on every block (UserError when the model does not support it)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"training.gradient_checkpointing: {type(model).__name__} ({source}) does not support "
                        "gradient checkpointing", hint="Set training.gradient_checkpointing = false.")
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x; the older name warns
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def peft_lora_config(lora, *, head_name: str | None, transposed_weights: bool = False):
    """The ``peft.LoraConfig`` of a ``[lora]`` section; ``head_name``: the score head kept trainable (or None);
    ``transposed_weights``: the model's linear layers are GPT-2's ``Conv1D`` (weights stored in x out)."""
    from peft import LoraConfig as PeftLoraConfig

    names = lora.target_names
    return PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules="all-linear" if names is None else names,  # a list: each name matches a path's end
        modules_to_save=[head_name] if head_name else None,
        task_type="SEQ_CLS" if head_name else "CAUSAL_LM",
        fan_in_fan_out=transposed_weights,
    )


def add_lora(model, lora, *, source: str, score_head: bool = False):
    """Inject LoRA adapters into ``model`` (in place; the base frozen) and return it.

    peft refusing the model or ``lora.target_modules`` becomes a UserError naming the key and the model (the
    driver's pre-flight check, :mod:`rlhfctl.models.preflight`, normally finds these before any worker starts).
    """
    from peft import get_peft_model

    head_name = score_head_name(model) if score_head else None
    if score_head and head_name is None:
        raise UserError(f"lora: {type(model).__name__} ({source}) has no score head (score, classifier or v_head) "
                        "to keep trainable")
    from transformers.pytorch_utils import Conv1D

    config = peft_lora_config(lora, head_name=head_name,
                              transposed_weights=any(isinstance(module, Conv1D) for module in model.modules()))
    try:
        with _peft_quietly():
            wrapper = get_peft_model(model, config)
    except ValueError as exc:  # peft's NoMatchingPeftModuleError is a ValueError too
        key = "lora.target_modules" if "arget module" in str(exc) else "lora"
        raise UserError(f"{key}: peft cannot add LoRA adapters to {type(model).__name__} ({source}): {exc}") from None
    model.__dict__[_PEFT_WRAPPER] = wrapper  # not a submodule: parameters and state dicts stay the model's own
    _sum_adapters_in_place(model)
    return model


def _sum_adapters_in_place(model) -> None:
    """Give each plain LoRA linear layer (peft's ``lora.Linear`` over an ``nn.Linear`` or GPT-2's ``Conv1D``)
    :func:`_in_place_linear`'s forward: the same values and gradients, two fewer output-sized temporaries per layer
    and call; fused into one autograd node where :func:`rlhfctl.models.lora_linear.fusable` allows."""
    import torch
    from peft.tuners.lora.layer import Linear
    from transformers.pytorch_utils import Conv1D

    for module in model.modules():
        if type(module) is Linear and type(module.get_base_layer()) in (torch.nn.Linear, Conv1D):
            module.__class__ = _in_place_linear()


@functools.cache
def _in_place_linear() -> type:
    """peft's ``lora.Linear`` whose forward sums the adapters into the base layer's output in place.

    peft 0.21 computes ``result = result + lora_B(lora_A(dropout(x))) * scaling``: four blocks of the output's size
    (the base output, the ``lora_B`` output, its scaled copy, the sum) where a plain linear layer makes one, and on
    CPU, where ``malloc``'s heap serves blocks of a few MiB, the three short-lived ones interleaved with the
    activations autograd keeps fragment it (one ~134 M Llama LoRA forward of 4 x 256 tokens: heap 2.0 GB, 1.1 GB of it free;
    benchmarks/README.md). Scaling the ``lora_B`` output and adding it into the base output in place computes the
    same values with the same floating-point operations, and autograd needs neither tensor (a linear layer keeps its
    input, not its output; a scalar product keeps nothing), so the gradients are the same too. Anything else (adapters
    off or merged, mixed-adapter batches, variants such as DoRA, extra arguments, a dtype that would be promoted)
    takes peft's own forward. The plain fp32 case without LoRA dropout (PPO's, SFT's and the RM's usual one) goes
    further: one autograd node for the whole layer (:func:`rlhfctl.models.lora_linear.lora_linear`: the adapter
    product summed into the output by the matmul, forward and backward; values and gradients to float rounding)."""
    from peft.tuners.lora.layer import Linear

    from rlhfctl.models.lora_linear import fusable, fused_forward

    class InPlaceLoraLinear(Linear):
        def forward(self, x, *args, **kwargs):
            if (args or kwargs or self.disable_adapters or self.merged
                    or any(adapter in self.lora_variant for adapter in self.active_adapters)):
                return super().forward(x, *args, **kwargs)
            self._check_forward_args(x)
            if fusable(self, x):
                return fused_forward(self, x)
            result = self.base_layer(x)
            result_dtype = result.dtype
            for adapter in self.active_adapters:
                if adapter not in self.lora_A.keys():
                    continue
                lora_A, lora_B = self.lora_A[adapter], self.lora_B[adapter]
                x = self._cast_input_dtype(x, lora_A.weight.dtype)
                delta = lora_B(lora_A(self.lora_dropout[adapter](x)))
                if delta.dtype == result.dtype:
                    result = result.add_(delta.mul_(self.scaling[adapter]))
                else:  # peft's promotion, then its cast back
                    result = result + delta * self.scaling[adapter]
            return result.to(result_dtype)

    return InPlaceLoraLinear


def attach_peft_config(model, peft_config) -> None:
    """Inject the adapters ``peft_config`` (an adapted model's own ``peft.LoraConfig``) describes into ``model``, in
    place: the unsharded copy of an FSDP-sharded adapted model made for its export
    (:func:`rlhfctl.training.fsdp.plain_copy`), which then exports as the model would have."""
    import copy

    from peft import get_peft_model

    with _peft_quietly():
        model.__dict__[_PEFT_WRAPPER] = get_peft_model(model, copy.deepcopy(peft_config))


def peft_config_of(model):
    """The ``peft.LoraConfig`` of an adapted model (None when :func:`add_lora` did not adapt it)."""
    wrapper = vars(model).get(_PEFT_WRAPPER)
    return None if wrapper is None else wrapper.peft_config["default"]


@contextlib.contextmanager
def _peft_quietly() -> Iterator[None]:
    """peft 0.21 asks transformers 5 a deprecated question (``is_gradient_checkpointing``): not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


def score_head_name(model) -> str | None:
    """The attribute name of a sequence-classification model's score head (``score`` for decoder LMs)."""
    for name in ("score", "classifier", "v_head"):
        if getattr(model, name, None) is not None:
            return name
    return None


def has_adapters(model) -> bool:
    """True when :func:`add_lora` adapted ``model`` (and the adapters were not merged away since)."""
    return _PEFT_WRAPPER in vars(model)


# ----------------------------------------------------------------------------------------------- one base, two models


def _adapter_modules(model) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return [module for module in model.modules() if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


@contextlib.contextmanager
def adapters_disabled(model) -> Iterator[None]:
    """Within the block, ``model`` computes as its base did before :func:`add_lora`: adapters off, a score head's
    original weights instead of its trained copy. Which parameters require gradients is left as it was (peft's
    switch changes it)."""
    if not has_adapters(model):
        yield
        return
    layers = _adapter_modules(model)
    trainable = [(param, param.requires_grad) for param in model.parameters()]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for param, requires_grad in trainable:
            param.requires_grad_(requires_grad)


class WithoutAdapters:
    """A callable view of an adapted model with its adapters off: its frozen base, without a second copy of the
    weights (PPO's reference policy). Not a module: moving, freezing or switching modes goes to the model itself."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, *args: Any, **kwargs: Any):
        with adapters_disabled(self.model):
            return self.model(*args, **kwargs)

    def get_base_model(self):
        """The adapted model it calls (peft's name), so callers that inspect the model's ``forward`` arguments
        (``logits_to_keep``: the LM head only where log-probs are read) see the transformers model's."""
        return self.model


@contextlib.contextmanager
def adapters_merged(model) -> Iterator[None]:
    """Within the block, ``model`` computes what it computes with its adapters on, at its base's cost: each LoRA
    layer's delta (``lora_B @ lora_A * scaling``, peft's ``get_delta_weight``) is added into a new copy of its base
    weight, which stands in for that weight while the layer's adapter is off. On exit the original weight tensors
    are put back (the same tensors, never written: bitwise what they were) and the adapters switched on again.

    For inference (generation): no gradient reaches the adapters inside, and the merged form has no LoRA dropout
    (as an adapted model in ``eval()`` mode). The values equal the adapted forward's up to float rounding (``W x +
    B A x s`` against ``(W + B A s) x``). It holds one extra copy of the adapted weights while the block runs. A
    layer peft merges differently (DoRA and other variants, LoRA biases) leaves the model as it is: adapters on.
    """
    layers = _lora_layers(model) if has_adapters(model) else []
    if not layers or not all(_plain_lora(layer) for layer in layers) or _shares_adapted_weights(model, layers):
        yield
        return
    import torch

    trainable = [(param, param.requires_grad) for param in model.parameters()]
    originals = []  # (weight parameter, its own tensor)
    try:
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                merged = weight.detach().clone()
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        merged += layer.get_delta_weight(adapter).to(merged.dtype)
                originals.append((weight, weight.data))
                weight.data = merged
                layer.enable_adapters(False)
        yield
    finally:
        for weight, original in originals:
            weight.data = original
        for layer in layers:
            layer.enable_adapters(True)
        for param, requires_grad in trainable:
            param.requires_grad_(requires_grad)


def _lora_layers(model) -> list:
    from peft.tuners.lora import LoraLayer

    return [module for module in model.modules() if isinstance(module, LoraLayer)]


def _shares_adapted_weights(model, layers) -> bool:
    """Whether an adapted layer's base weight is used elsewhere too (an output head tied to the embeddings): merging
    into it would change the other user as well."""
    adapted = {id(layer.get_base_layer().weight) for layer in layers}
    uses: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            uses[id(param)] = uses.get(id(param), 0) + 1
    return any(uses.get(key, 0) > 1 for key in adapted)


def _plain_lora(layer) -> bool:
    """A LoRA layer whose merge is ``weight + get_delta_weight`` (no variant such as DoRA, no LoRA bias), adapters
    on and not merged already."""
    return (not layer.merged and not layer.disable_adapters and not getattr(layer, "lora_variant", {})
            and not any(getattr(layer, "lora_bias", {}).values()))


# ----------------------------------------------------------------------------------------------- export and load


def export_adapted(model, folder: Path, *, merge: bool):
    """Write an adapted model's weights into ``folder`` (the caller adds the tokenizer and extra files).

    ``merge``: the adapters (and a trained score head) are merged into the base in place (the model is no longer
    adapted afterwards) and the full model saved, as plain transformers loads it. Otherwise the adapter folder:
    ``adapter_config.json`` (whose ``base_model_name_or_path`` names the base) and ``adapter_model.safetensors``.
    Returns the model as saved.
    """
    wrapper = vars(model)[_PEFT_WRAPPER]
    if merge:
        merged = wrapper.merge_and_unload()
        del merged.__dict__[_PEFT_WRAPPER]
        merged.save_pretrained(folder)
        return merged
    wrapper.save_pretrained(folder)
    return model


def is_adapter_folder(source: str | Path) -> bool:
    """A local folder holding a peft adapter and no full model (``adapter_config.json``, no ``config.json``)."""
    folder = Path(str(source)).expanduser()
    return (folder / ADAPTER_CONFIG_FILE).is_file() and not (folder / "config.json").is_file()


def adapter_base(source: str | Path) -> str:
    """The base model an adapter folder was trained on (its ``base_model_name_or_path``)."""
    path = Path(str(source)).expanduser() / ADAPTER_CONFIG_FILE
    try:
        base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable peft adapter config: {exc}") from None
    if not base:
        raise UserError(f"{path} does not name its base model (base_model_name_or_path)",
                        hint="Export the stage with lora.merge_on_export = true, or add the base's folder there.")
    return str(base)


def load_adapter_folder(loader, source: str | Path, **kwargs):
    """An adapter folder as a model: its base loaded with ``loader.from_pretrained(base, **kwargs)``, the adapter
    (and a trained score head) merged in. With ``output_loading_info=True`` the load report of the base, minus the
    head the adapter supplied."""
    from peft import PeftModel

    want_info = kwargs.get("output_loading_info", False)
    loaded = loader.from_pretrained(adapter_base(source), **kwargs)
    base, info = loaded if want_info else (loaded, None)
    with _peft_quietly():
        merged = PeftModel.from_pretrained(base, str(source)).merge_and_unload()
    if not want_info:
        return merged
    head = score_head_name(merged)
    missing = [name for name in info.get("missing_keys", []) if head is None or not name.startswith(f"{head}.")]
    return merged, {**info, "missing_keys": missing}
