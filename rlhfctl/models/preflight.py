"""The driver's check of ``[lora]``, ``training.gradient_checkpointing`` and ``training.strategy = "fsdp"`` against
the models, before any worker starts: a ``lora.target_modules`` name that matches no module, a model peft cannot
adapt, checkpointing a model that does not support it, an adapter export (``merge_on_export = false``) of a model
that was itself loaded from an adapter folder, a model whose transformer blocks FSDP cannot find. Each becomes a :class:`~rlhfctl.errors.ConfigError` naming the key and the model (exit 2).

The module tree comes from ``config.json`` alone: the model is built on PyTorch's ``meta`` device (no weights
read, no memory), which takes milliseconds once torch and transformers are imported; peft is not imported (it
would add 2.5 s): the layer names and types peft accepts are checked directly, and the worker's
:func:`~rlhfctl.models.adapters.add_lora` still turns any refusal of peft's into a UserError. The imports are what
costs (about 3 s on a 2-core machine), so nothing runs without a ``[lora]`` section, checkpointing or FSDP, and a driver
that has not imported torch (the Ray path keeps it out of the long-lived driver) runs the check in a short child
process (``python -m rlhfctl.models.preflight``, JSON in and out) instead of importing it. A one-worker run trains
in the driver's own process, which imports torch anyway, so it checks in-process.

Recipes call :func:`check_model_settings` in ``build_job`` with the models they will adapt (:class:`AdaptedModel`).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from rlhfctl.errors import ConfigError, ConfigIssue, UserError

CHILD_TIMEOUT_S = 600


@dataclass(frozen=True)
class AdaptedModel:
    """A model a stage trains: where it comes from and what it is loaded as."""

    key: str  # the config key naming it, e.g. "general.base_model"
    source: str  # hub id, model folder or adapter folder
    kind: Literal["causal", "score"]  # a causal LM, or a scalar-head (reward / value) model


def check_model_settings(config, uses: Sequence[AdaptedModel]) -> None:
    """Raise a ConfigError listing every problem of ``config.lora`` / ``training.gradient_checkpointing`` with
    ``uses`` (nothing to do, and nothing imported, when neither is set)."""
    lora, checkpointing = getattr(config, "lora", None), config.training.gradient_checkpointing
    sharded = config.training.strategy == "fsdp" and config.training.num_training_workers > 1
    if lora is None and not checkpointing and not sharded:
        return
    issues = _adapter_source_issues(lora, uses)
    request = {"uses": [asdict(use) for use in uses], "lora": lora.model_dump() if lora else None,
               "gradient_checkpointing": checkpointing, "trust_remote_code": config.general.trust_remote_code,
               "fsdp": sharded}
    local = config.training.num_training_workers == 1 and config.general.ray_address is None
    found = inspect_models(request) if local or "torch" in sys.modules else _inspect_in_child(request)
    issues += [ConfigIssue(key, message) for key, message in found]
    if issues:
        raise ConfigError(issues)


def _adapter_source_issues(lora, uses: Sequence[AdaptedModel]) -> list[ConfigIssue]:
    from rlhfctl.models.adapters import is_adapter_folder

    if lora is None or lora.merge_on_export:
        return []
    return [ConfigIssue(
        "lora.merge_on_export",
        f"false exports only the adapter, but {use.key} = {use.source} is itself an adapter folder: the new adapter "
        "would need that merged model as its base, which exists in no folder. Set lora.merge_on_export = true, or "
        f"export the earlier stage merged", False) for use in uses if is_adapter_folder(use.source)]


def _inspect_in_child(request: dict[str, Any]) -> list[tuple[str, str]]:
    """:func:`inspect_models` in a child Python (torch stays out of this process)."""
    try:
        done = subprocess.run([sys.executable, "-m", "rlhfctl.models.preflight"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)
        answer = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        done, answer = None, {"failure": f"{type(exc).__name__}: {exc}"}
    if not isinstance(answer, dict):
        answer = {"failure": (done.stderr.strip().splitlines() or ["no output"])[-1] if done else "no output"}
    if "user_error" in answer:
        raise UserError(answer["user_error"], hint=answer.get("hint") or None)
    if "failure" in answer:  # the check itself broke: the workers check again when they build the models
        logging.getLogger("rlhfctl.preflight").warning(
            "could not check [lora] / gradient checkpointing against the models before starting: %s",
            answer["failure"])
        return []
    return [(key, message) for key, message in answer["issues"]]


def inspect_models(request: dict[str, Any]) -> list[tuple[str, str]]:
    """``(key, message)`` for every problem of the requested settings with each model, built on the meta device."""
    from rlhfctl.config.schema import LoraConfig

    lora = LoraConfig.model_validate(request["lora"]) if request["lora"] else None
    issues: list[tuple[str, str]] = []
    for use in (AdaptedModel(**fields) for fields in request["uses"]):
        model = _meta_model(use, trust_remote_code=request["trust_remote_code"])
        name = f"{type(model).__name__} ({use.source}, {use.key})"
        if request["gradient_checkpointing"] and not getattr(model, "supports_gradient_checkpointing", False):
            issues.append(("training.gradient_checkpointing",
                           f"{name} does not support gradient checkpointing; set it to false"))
        if lora is not None:
            issues += _lora_issues(model, lora, use, name)
        if request.get("fsdp"):
            issues += _sharding_issues(model)
    return list(dict.fromkeys(issues))


def _sharding_issues(model) -> list[tuple[str, str]]:
    """``training.strategy = "fsdp"`` needs the model's transformer blocks (the units it shards)."""
    from rlhfctl.training.fsdp import BlocksNotFound, transformer_blocks

    try:
        transformer_blocks(model)
    except BlocksNotFound as exc:
        return [("training.strategy", exc.message.split(": ", 1)[1] + "; use \"ddp\" for this model")]
    return []


def _lora_issues(model, lora, use: AdaptedModel, name: str) -> list[tuple[str, str]]:
    """What peft would refuse, found from the module tree (importing peft would add seconds to every start; the
    worker's :func:`~rlhfctl.models.adapters.add_lora` still has the last word)."""
    from rlhfctl.models.adapters import score_head_name

    head = score_head_name(model) if use.kind == "score" else None
    modules = [(path, module) for path, module in model.named_modules()
               if path and not (head and (path == head or path.startswith(f"{head}.")))]
    linear = sorted({path.rsplit(".", 1)[-1] for path, module in modules if _is_linear(module)})
    if lora.target_names is None:  # "all-linear"
        return [] if linear else [("lora.target_modules", f'"all-linear" finds no linear layer in {name}')]
    issues = []
    for target in lora.target_names:
        matched = [module for path, module in modules if path == target or path.endswith(f".{target}")]
        if not matched:
            issues.append(("lora.target_modules", f"{target!r} matches no module of {name}"
                                                  + (f" (the score head is trained in full anyway)" if target == head
                                                     else "") + f"; its linear layers are named {', '.join(linear)}"))
        elif not all(_peft_can_adapt(module) for module in matched):
            kinds = sorted({type(module).__name__ for module in matched if not _peft_can_adapt(module)})
            issues.append(("lora.target_modules", f"{target!r} names {', '.join(kinds)} layers of {name}, which "
                                                  f"LoRA cannot adapt; its linear layers are named {', '.join(linear)}"))
    return issues


def _is_linear(module) -> bool:
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def _peft_can_adapt(module) -> bool:
    """The layer types peft's LoRA adapts (its own error lists them)."""
    from torch import nn

    return _is_linear(module) or isinstance(module, (nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                                     nn.MultiheadAttention))


def _meta_model(use: AdaptedModel, *, trust_remote_code: bool):
    """``use``'s model class built from its ``config.json`` on the meta device (no weights)."""
    import torch

    from rlhfctl.models.adapters import adapter_base, is_adapter_folder
    from rlhfctl.models.loading import explain_load_error, quiet_transformers

    quiet_transformers()  # before transformers is imported (its start-up memo, rlhfctl.models.transformers_startup)
    import transformers

    source = adapter_base(use.source) if is_adapter_folder(use.source) else use.source
    auto = {"causal": transformers.AutoModelForCausalLM,
            "score": transformers.AutoModelForSequenceClassification}[use.kind]
    try:
        config = transformers.AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                         **({"num_labels": 1} if use.kind == "score" else {}))
    except (OSError, ValueError) as exc:
        raise explain_load_error("model", source, exc) from None
    with torch.device("meta"):
        return auto.from_config(config, trust_remote_code=trust_remote_code)


def main() -> None:
    """The child process: a request as JSON on stdin, ``{"issues": [[key, message], ...]}`` on stdout."""
    request = json.loads(sys.stdin.read())
    try:
        answer: dict[str, Any] = {"issues": inspect_models(request)}
    except UserError as exc:
        answer = {"user_error": exc.message, "hint": exc.hint}
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which carries on without the check
        answer = {"failure": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
