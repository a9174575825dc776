"""``training.strategy = "fsdp"``: PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``) on the training workers.

Worker side only (imported by :class:`rlhfctl.training.worker.WorkerContext` when a run shards its models):

- :func:`shard_model`: every transformer block is one FSDP unit, and so is every other piece a recipe may call on
  its own — a score model's backbone (``model.base_model``) and its score head, which the scorers of
  :mod:`rlhfctl.models.scoring` call directly — then the module handed in (the root: embeddings, final norm, an
  LM head tied to the embeddings). Each worker keeps ``1 / world_size`` of every parameter, gradient and optimizer
  state; a unit's full parameters exist only while it computes (the next one is prefetched). Mixed precision stays
  autocast over fp32 shards (``training.mixed_precision``); gradient checkpointing and LoRA adapters (frozen base,
  trainable adapters in the same units) are applied before sharding and work unchanged. On CPU the units' flat
  all-gather and reduce-scatter buffers come from a per-worker pool (:mod:`rlhfctl.training.fsdp_buffers`).
- :func:`transformer_blocks`: the blocks to wrap, from the model's own ``_no_split_modules`` (the transformers
  convention for "a block") or else its one list of same-class layers; a model without either cannot be sharded
  (:class:`BlocksNotFound`, exit 2 naming the model class).
- :func:`gathered`: full parameters gathered once for a stretch of work whose number of forward calls differs
  between workers (sampling that stops at EOS, validation shards of unequal size): no collective runs inside, so
  workers never wait on each other there. PPO generates this way (the documented faster path: one all-gather per
  unit per rollout, not one per generated token).
- :func:`model_for_export` (:func:`full_state_dict` + :func:`plain_copy`): the HF export — full weights gathered on
  rank 0 (CPU) and put into an unsharded copy of the model built on the meta device, adapters re-attached, so the
  export path of a DDP run (merge or adapter folder, ``save_pretrained``) writes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from rlhfctl.errors import UserError
from rlhfctl.training.fsdp_buffers import pool_collective_buffers

_HEAD_NAMES = ("score", "classifier", "v_head")


class BlocksNotFound(UserError):
    """A model FSDP cannot split into blocks (exit 2)."""


# ----------------------------------------------------------------------------------------------- wrapping


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of ``model`` (any module containing a transformers model), in order.

    Found by class name from ``_no_split_modules`` of the transformers models inside, else as the longest
    ``nn.ModuleList`` whose entries share one class. Raises :class:`BlocksNotFound` naming the class otherwise.
    """
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    if names:
        blocks = [module for module in model.modules() if type(module).__name__ in names]
        if blocks:
            return blocks
    lists = [child for child in model.modules() if isinstance(child, nn.ModuleList) and len(child) > 1
             and len({type(entry) for entry in child}) == 1]
    if lists:
        return list(max(lists, key=len))
    hf_model = next((module for module in model.modules() if hasattr(module, "config")), model)
    raise BlocksNotFound(
        f'training.strategy = "fsdp": cannot find the transformer blocks of {type(hf_model).__name__} to shard '
        "(it names no _no_split_modules and has no list of identical layers)",
        hint='Use training.strategy = "ddp" for this model.')


def is_sharded(module: nn.Module) -> bool:
    """True when ``module``'s parameters are already FSDP shards (e.g. a base another model shares)."""
    return any(isinstance(param, DTensor) for param in module.parameters())


def shard_model(model: nn.Module) -> nn.Module:
    """Shard ``model`` in place (blocks, then a score model's backbone and head, then the root) and return it."""
    if is_sharded(model):
        return model
    blocks = transformer_blocks(model)
    for block in blocks:
        fully_shard(block)
    for piece in _separately_called_pieces(model):
        fully_shard(piece)
    fully_shard(model)
    pool_collective_buffers(model)  # CPU: the units' flat collective buffers reused, not churned through malloc
    # Make ``model`` the root of its units now. FSDP2 otherwise takes the first unit that runs a forward as a root,
    # and a backbone called on its own first (LoRA PPO's reward model is the value model's base, scored before the
    # value model first runs) would then refuse to join the value model's tree.
    model._get_fsdp_state()._lazy_init()
    return model


def _separately_called_pieces(model: nn.Module) -> list[nn.Module]:
    """The backbone and score head of each score model inside ``model``: the scorers call them one at a time.

    A causal LM is called as a whole (``forward``/``generate``) and its head is often tied to the embeddings, which
    must then share a unit: it stays in the root's."""
    pieces: list[nn.Module] = []
    for module in model.modules():
        backbone = getattr(module, "base_model", None)
        if not isinstance(backbone, nn.Module) or backbone is module or not hasattr(module, "config"):
            continue
        heads = [getattr(module, name) for name in _HEAD_NAMES if isinstance(getattr(module, name, None), nn.Module)]
        if not heads or _shares_parameters(backbone, heads):
            continue
        pieces += [backbone, *heads]
    return pieces


def _shares_parameters(first: nn.Module, others: list[nn.Module]) -> bool:
    ids = {id(param) for param in first.parameters()}
    return any(id(param) in ids for other in others for param in other.parameters())


# ----------------------------------------------------------------------------------------------- gathering


def fsdp_units(*models) -> list[FSDPModule]:
    """Every FSDP unit inside ``models`` (modules or objects holding one in ``.model``), each once."""
    units: dict[int, FSDPModule] = {}
    for model in models:
        module = model if isinstance(model, nn.Module) else getattr(model, "model", None)
        if isinstance(module, nn.Module):
            units.update({id(unit): unit for unit in module.modules() if isinstance(unit, FSDPModule)})
    return list(units.values())


_GATHERED: set[int] = set()  # the units a gathered() block of this process holds now


@contextlib.contextmanager
def gathered(*models) -> Iterator[None]:
    """Within the block, every unit of ``models`` holds its full parameters and keeps them across forwards, so a
    worker can run any number of forward passes (``generate``) without the others. Every worker must enter it
    (the gathering is collective); no gradients flow inside."""
    units = [unit for unit in fsdp_units(*models) if id(unit) not in _GATHERED]  # nested: the outer block holds
    _GATHERED.update(id(unit) for unit in units)
    for unit in units:
        unit.set_reshard_after_forward(False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True)
            _GATHERED.discard(id(unit))


# ----------------------------------------------------------------------------------------------- export


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) weights of ``model`` on rank 0's CPU (an empty dict on the other ranks). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def model_for_export(root: nn.Module, *, is_main: bool) -> nn.Module | None:
    """The transformers model inside ``root`` as an export writes it: itself when unsharded; when sharded, an
    unsharded copy with the full weights on the main rank (None elsewhere). Collective when sharded."""
    prefix, hf_model = next((name, module) for name, module in root.named_modules()
                            if hasattr(module, "config") and hasattr(module, "save_pretrained"))
    if not is_sharded(root):
        return hf_model
    weights = full_state_dict(root)
    if not is_main:
        return None
    start = f"{prefix}." if prefix else ""
    return plain_copy(hf_model, {key[len(start):]: value for key, value in weights.items() if key.startswith(start)})


def plain_copy(hf_model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """An unsharded copy of the transformers model ``hf_model`` holding ``weights`` (its full state dict): built
    on the meta device from its config, LoRA adapters re-attached as they were, then the tensors assigned (no
    copy of them is made)."""
    from rlhfctl.models.adapters import attach_peft_config, peft_config_of

    original_class = next(cls for cls in type(hf_model).__mro__ if not issubclass(cls, FSDPModule))
    lora = peft_config_of(hf_model)
    with torch.device("meta"):
        copy = original_class(hf_model.config)
        if lora is not None:
            attach_peft_config(copy, lora)
    missing, unexpected = copy.load_state_dict(weights, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"the gathered weights do not fit {original_class.__name__}: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    copy.tie_weights()
    for name, buffer in list(copy.named_buffers()):  # non-persistent buffers (rotary tables): the model's own
        if buffer.is_meta:
            owner_name, _, leaf = name.rpartition(".")
            owner = copy.get_submodule(owner_name) if owner_name else copy
            owner._buffers[leaf] = hf_model.get_buffer(name).detach().to("cpu")
    return copy
