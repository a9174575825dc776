"""Training state <-> a checkpoint folder of safetensors + JSON (no pickle anywhere).

Layout of one checkpoint folder (``checkpoint_<step>``)::

    state.json                   step, epoch, batch_in_epoch, extra, scheduler states, optimizer non-tensor state,
                                 RNG states (python random, numpy, torch per rank) and a manifest of every file
    model.<name>.safetensors     weights of each model (shared/tied tensors stored once); of a model with frozen
                                 parameters (LoRA: a frozen base) only the trainable ones, which is all that changes
    optim.<name>.safetensors     optimizer tensors (Adam moments, step counters ...), keyed "<param index>/<key>"

``state.json`` is written last and lists the size of every other file, so a folder that was interrupted while
being written is recognised as incomplete (:func:`is_complete`) and never picked for resuming.

A ``training.strategy = "fsdp"`` run keeps its models and optimizer states as sharded ``shards/`` files instead of
the two safetensors kinds (:mod:`rlhfctl.training.sharded_checkpoint`); ``state.json`` then says
``"strategy": "fsdp"`` and how many workers wrote it.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfctl.errors import UserError
from rlhfctl.runfiles import CHECKPOINT_PREFIX

STATE_FILE = "state.json"  # inside a checkpoint folder; the other files are listed in it
FORMAT_VERSION = 1
_CHECKPOINT_NAME = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")


@dataclass
class TrainState:
    """Everything needed to continue a run exactly.

    ``models``/``optimizers``/``schedulers`` map a name (e.g. ``"policy"``) to the live objects when saving or
    restoring in place. :func:`read_checkpoint` without targets fills them with raw state dicts instead.
    ``extra`` is JSON data of the stage (e.g. PPO's KL controller, an episode counter).
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of ``epoch`` already consumed (the sampler position)
    models: dict[str, Any] = field(default_factory=dict)
    optimizers: dict[str, Any] = field(default_factory=dict)
    schedulers: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


# ----------------------------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """JSON-ready RNG states of python ``random``, numpy (when installed) and torch (CPU and CUDA)."""
    import torch

    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                          "cached": float(cached)}
    except ImportError:  # pragma: no cover - numpy ships with torch's usual installs
        pass
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (parts missing from ``state`` are left alone)."""
    import torch

    if "python" in state:
        python = state["python"]
        random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    if "torch" in state:
        torch.set_rng_state(_unb64(state["torch"]))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["torch_cuda"]])
    if "numpy" in state:
        import numpy as np

        numpy_state = state["numpy"]
        np.random.set_state((numpy_state["name"], np.asarray(numpy_state["keys"], dtype=np.uint32),
                             numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached"]))


def _b64(byte_tensor) -> str:
    return base64.b64encode(byte_tensor.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str):
    import torch

    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


# ----------------------------------------------------------------------------------------------- optimizer


def _split_optimizer_state(state_dict: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """Optimizer state dict -> (tensors for safetensors, JSON-ready rest)."""
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_index}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, Any], rest: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        param_index, key = name.split("/", 1)
        state.setdefault(int(param_index), {})[key] = tensor
    for param_index, values in rest.get("scalars", {}).items():
        state.setdefault(int(param_index), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


# ----------------------------------------------------------------------------------------------- save / load


def write_checkpoint(
    state: TrainState,
    folder: Path,
    *,
    rng_states: list[dict[str, Any]] | None = None,
    metrics: dict[str, float] | None = None,
    shard_files: dict[str, int] | None = None,
    world_size: int = 1,
) -> Path:
    """Write ``state`` into ``folder`` (created; ``state.json`` last). ``rng_states`` holds one entry per rank.

    ``shard_files``: the models and optimizers were written as shards by every rank
    (:func:`rlhfctl.training.sharded_checkpoint.write_shards`); they are listed (name -> size), not written again.
    """
    from safetensors.torch import save_file, save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, int] = dict(shard_files or {})
    sharded = shard_files is not None
    model_contents: dict[str, str] = {}
    for name, model in state.models.items() if not sharded else ():
        file_name = f"model.{name}.safetensors"
        trainable = trainable_tensors(unwrap_model(model))
        if trainable is None:
            save_model(unwrap_model(model), str(folder / file_name))
            model_contents[name] = "full"
        else:
            save_file(trainable, str(folder / file_name))
            model_contents[name] = "trainable"
        manifest[file_name] = (folder / file_name).stat().st_size
    optimizer_rest: dict[str, Any] = {}
    for name, optimizer in state.optimizers.items() if not sharded else ():
        tensors, rest = _split_optimizer_state(optimizer.state_dict())
        file_name = f"optim.{name}.safetensors"
        save_file(tensors, str(folder / file_name))
        manifest[file_name] = (folder / file_name).stat().st_size
        optimizer_rest[name] = rest
    document = {
        "format_version": FORMAT_VERSION,
        "strategy": "fsdp" if sharded else "ddp",
        "world_size": world_size,
        "step": state.step,
        "epoch": state.epoch,
        "batch_in_epoch": state.batch_in_epoch,
        "extra": state.extra,
        "metrics": metrics or {},
        "optimizers": optimizer_rest,
        "model_contents": model_contents,
        "schedulers": {name: scheduler.state_dict() for name, scheduler in state.schedulers.items()},
        "rng": rng_states if rng_states is not None else [capture_rng_state()],
        "files": manifest,
    }
    text = json.dumps(document, allow_nan=False)
    tmp = folder / f".{STATE_FILE}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, folder / STATE_FILE)
    return folder


def is_complete(folder: Path) -> bool:
    """True when ``state.json`` parses and every file it lists exists with the recorded size."""
    folder = Path(folder)
    try:
        document = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        return all((folder / name).stat().st_size == size for name, size in document["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def read_step(folder: Path) -> int:
    return int(json.loads((Path(folder) / STATE_FILE).read_text(encoding="utf-8"))["step"])


def read_layout(folder: Path) -> tuple[str, int | None]:
    """(``"ddp"`` or ``"fsdp"``, the number of workers that wrote it: None when not recorded) of a checkpoint."""
    document = json.loads((Path(folder) / STATE_FILE).read_text(encoding="utf-8"))
    return str(document.get("strategy", "ddp")), document.get("world_size")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete ``checkpoint_*`` folder with the highest step under ``run_dir`` (incomplete ones skipped)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for child in run_dir.iterdir():
        if child.is_dir() and _CHECKPOINT_NAME.match(child.name) and is_complete(child):
            step = read_step(child)
            if best is None or step > best[0]:
                best = (step, child)
    return best[1] if best else None


def read_checkpoint(folder: Path, into: TrainState | None = None, *, rank: int = 0) -> TrainState:
    """Load a checkpoint folder.

    With ``into``: weights, optimizer and scheduler states are loaded in place into its objects (names must
    match), its counters and ``extra`` are updated, and this rank's RNG state is restored; ``into`` is returned.
    Without: a new TrainState whose ``models``/``optimizers``/``schedulers`` hold raw state dicts.
    """
    from safetensors.torch import load_file, load_model

    folder = Path(folder)
    document = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    state = into if into is not None else TrainState()
    state.step, state.epoch = int(document["step"]), int(document["epoch"])
    state.batch_in_epoch = int(document["batch_in_epoch"])
    state.extra = dict(document.get("extra", {}))
    if document.get("strategy") == "fsdp":
        if into is None:
            raise ValueError(f"{folder} is a sharded (fsdp) checkpoint: read it into live models")
        from rlhfctl.training.sharded_checkpoint import read_shards

        read_shards(folder, into)
        _read_schedulers_and_rng(document, into, rank)
        return into
    model_names = {name[len("model."):-len(".safetensors")] for name in document["files"] if name.startswith("model.")}
    contents = document.get("model_contents", {})
    for name in sorted(model_names):
        path = str(folder / f"model.{name}.safetensors")
        if into is None:
            state.models[name] = load_file(path)
        elif name in into.models and _is_sharded(into.models[name]):  # a DDP checkpoint resumed under FSDP
            from rlhfctl.training.sharded_checkpoint import load_full_into_sharded

            optimizer_rest = document.get("optimizers", {}).get(name)
            load_full_into_sharded(
                into.models[name], into.optimizers.get(name), load_file(path),
                None if optimizer_rest is None else _join_optimizer_state(
                    load_file(str(folder / f"optim.{name}.safetensors")), optimizer_rest))
        elif name in into.models and contents.get(name, "full") == "trainable":
            load_trainable(unwrap_model(into.models[name]), load_file(path), name)
        elif name in into.models:
            load_model(unwrap_model(into.models[name]), path, strict=True)
    for name, rest in document.get("optimizers", {}).items():
        if into is not None and name in into.models and _is_sharded(into.models[name]):
            continue  # converted with its model above
        full = _join_optimizer_state(load_file(str(folder / f"optim.{name}.safetensors")), rest)
        if into is None:
            state.optimizers[name] = full
        elif name in into.optimizers:
            into.optimizers[name].load_state_dict(full)
    if into is None:
        state.schedulers.update(document.get("schedulers", {}))
        return state
    _read_schedulers_and_rng(document, into, rank)
    return into


def _read_schedulers_and_rng(document: dict[str, Any], into: TrainState, rank: int) -> None:
    for name, scheduler_state in document.get("schedulers", {}).items():
        if name in into.schedulers:
            into.schedulers[name].load_state_dict(scheduler_state)
    rng_states = document.get("rng") or []
    if rank < len(rng_states):
        restore_rng_state(rng_states[rank])


def _is_sharded(model) -> bool:
    """True for a model whose parameters are FSDP shards."""
    from rlhfctl.training.fsdp import is_sharded

    return is_sharded(model)


def trainable_tensors(model) -> dict[str, Any] | None:
    """The parameters that require gradients, by name, when some do not (a frozen base); None when all do."""
    named = list(model.named_parameters())
    trainable = {name: param.detach().cpu().contiguous() for name, param in named if param.requires_grad}
    return None if len(trainable) == len(named) else trainable


def parameter_counts(*models) -> tuple[int, int]:
    """``(trainable, total)`` parameters of ``models``, each tensor counted once (a base two models share, tied
    weights)."""
    seen: set[int] = set()
    trainable = total = 0
    for model in models:
        for param in unwrap_model(model).parameters():
            if id(param) not in seen:
                seen.add(id(param))
                total += param.numel()
                trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def load_trainable(model, tensors: dict[str, Any], name: str) -> None:
    """Copy a checkpoint's trainable parameters into ``model``: exactly the names that require gradients there."""
    import torch

    params = {key: param for key, param in model.named_parameters() if param.requires_grad}
    if params.keys() != tensors.keys():
        missing, unexpected = sorted(params.keys() - tensors.keys()), sorted(tensors.keys() - params.keys())
        raise UserError(f"cannot resume: the checkpoint's trainable parameters of {name!r} are not the model's "
                        f"(missing: {missing[:3]}, unexpected: {unexpected[:3]})",
                        hint="Resume with the [lora] settings the run was started with, or start over with --force.")
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(tensors[key])


def unwrap_model(model):
    """The plain module inside a DistributedDataParallel (or similar) wrapper (the model itself otherwise)."""
    return getattr(model, "module", model)
