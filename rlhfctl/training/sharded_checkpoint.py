"""The models and optimizers of an FSDP run's checkpoint: ``torch.distributed.checkpoint`` (DCP) shards.

Layout inside a checkpoint folder (the rest is :mod:`rlhfctl.training.checkpoint`'s: ``state.json`` with the
counters, scheduler and RNG states and the manifest of every file, written last by rank 0)::

    shards/.metadata             DCP's index of every tensor (rank 0)
    shards/__<rank>_0.distcp     each rank's shards of every model and optimizer state

Each rank writes its own files into its own staging folder; Ray Train merges the workers' folders of one
``ray.train.report`` into one checkpoint directory. Tensors are keyed by parameter name (``models/<name>/<fqn>``,
``optimizers/<name>/state/<fqn>/exp_avg``), not by rank, so DCP reshards on load: a checkpoint resumes on another
number of workers, and into unsharded (DDP or single-worker) models as well. Of a model with frozen parameters
(LoRA's base) only the trainable ones are stored, as in the safetensors layout.

A DDP checkpoint (whole tensors in safetensors, optimizer state keyed by parameter index) resumed under FSDP is
converted on load (:func:`load_full_into_sharded`): every rank reads the whole file and keeps its shard.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

SHARDS_DIR = "shards"


def _state_dicts(state) -> dict[str, dict[str, Any]]:
    """``{"models": {name: state dict}, "optimizers": {name: state dict}}`` keyed by parameter name (sharded
    DTensors under FSDP, plain tensors otherwise). The optimizer states are created if no step was taken yet."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    models: dict[str, Any] = {}
    optimizers: dict[str, Any] = {}
    for name, model in state.models.items():
        weights = get_model_state_dict(model)
        trainable = {key for key, param in model.named_parameters() if param.requires_grad}
        frozen = {key for key, param in model.named_parameters() if not param.requires_grad}
        if frozen:  # a frozen base: only what trains changes
            weights = {key: value for key, value in weights.items() if _matches(key, trainable)}
        models[name] = weights
        if name in state.optimizers:
            optimizers[name] = get_optimizer_state_dict(model, state.optimizers[name])
    return {"models": models, "optimizers": optimizers}


def _matches(state_key: str, parameter_names: set[str]) -> bool:
    """A state-dict key names one of ``parameter_names`` (wrappers such as DDP's ``module.`` are cleaned away by
    ``get_model_state_dict``; named_parameters may still carry them)."""
    return state_key in parameter_names or any(name.endswith("." + state_key) for name in parameter_names)


def write_shards(state, folder: Path) -> dict[str, int]:
    """Every rank: this rank's shards of ``state``'s models and optimizers into ``folder/shards``. Collective.
    Returns the files this rank wrote (relative to ``folder``) with their sizes, for the manifest."""
    import torch.distributed.checkpoint as dcp

    target = Path(folder) / SHARDS_DIR
    target.mkdir(parents=True, exist_ok=True)
    dcp.save(_state_dicts(state), storage_writer=dcp.FileSystemWriter(str(target)))
    return {f"{SHARDS_DIR}/{path.name}": path.stat().st_size for path in sorted(target.iterdir()) if path.is_file()}


def read_shards(folder: Path, state) -> None:
    """Load ``folder/shards`` into ``state``'s models and optimizers in place (each rank its shard; a plain model
    gets whole tensors). Collective when a process group is up."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, \
        set_optimizer_state_dict

    content = _state_dicts(state)
    with warnings.catch_warnings():  # one process (a run resumed on one worker) is meant: no need to say so
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load(content, storage_reader=dcp.FileSystemReader(str(Path(folder) / SHARDS_DIR)))
    partial = StateDictOptions(strict=False)
    for name, model in state.models.items():
        set_model_state_dict(model, content["models"][name], options=partial)
        if name in state.optimizers:
            set_optimizer_state_dict(model, state.optimizers[name], content["optimizers"][name])


def load_full_into_sharded(model, optimizer, weights: dict[str, Any], optimizer_state: dict | None) -> None:
    """A DDP checkpoint's whole tensors into an FSDP-sharded ``model`` (and its ``optimizer``): each rank keeps its
    shard. ``optimizer_state`` is keyed by parameter index in the optimizer's order (``torch.optim``'s own
    ``state_dict``); it is re-keyed by parameter name, which the sharded optimizer's state is keyed by."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, \
        set_optimizer_state_dict

    whole = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=whole)
    if optimizer is None or optimizer_state is None:
        return
    names = {id(param): name for name, param in model.named_parameters()}
    ordered = [names[id(param)] for group in optimizer.param_groups for param in group["params"]]
    by_name = {ordered[int(index)]: values for index, values in optimizer_state["state"].items()}
    groups = []
    start = 0
    for group in optimizer_state["param_groups"]:
        count = len(group["params"])
        groups.append({**group, "params": ordered[start:start + count]})
        start += count
    set_optimizer_state_dict(model, optimizer, {"state": by_name, "param_groups": groups}, options=whole)
