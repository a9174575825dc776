"""Reused collective buffers for FSDP2 on CPU: a unit's flat all-gather output and reduce-scatter buffers.

Every step FSDP2 allocates, per unit, a flat buffer for the all-gathered parameters (in the forward and again in
the backward, which gradient checkpointing's recompute uses), one for the gradients it reduce-scatters and one
for the reduced shard. On a GPU these come from PyTorch's caching allocator; on CPU from ``malloc``, and at these
sizes (a ~60 M-parameter Llama's decoder block: 12.6 MB) glibc serves them from a heap that keeps what is freed
(benchmarks/README.md, "Sharded training": 0.5-1.2 GB of freed heap stays resident per worker).

:class:`BufferPool` hands such buffers out again instead: a request for ``(numel, dtype)`` gets a buffer the pool
already holds when nothing but the pool references its storage any more, a new one otherwise. It keeps at most
as many buffers of a size as were ever in use at once (a forward holds two all-gather outputs: the running unit's
and the next one's), so its memory is part of the peak anyway. Buffers of ``MMAP_THRESHOLD_BYTES`` or more are
not pooled: glibc maps those and gives them back when freed, so pooling them would only keep them.

:func:`pool_collective_buffers` installs it on every unit of a sharded model through FSDP2's public
``set_custom_all_gather`` / ``set_custom_reduce_scatter`` (the collectives stay ``all_gather_single`` /
``reduce_scatter_single``: only where their buffers come from changes). CPU only: on an accelerator the caching
allocator already reuses them. When this torch cannot tell whether a buffer is still referenced, nothing is
installed (FSDP2's own allocation then applies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather, ReduceScatter

from rlhfctl.training.activation_memory import MMAP_THRESHOLD_BYTES

_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)  # references to a storage, views included


class BufferPool:
    """CPU buffers by ``(numel, dtype)``, each handed out again once nothing but the pool holds it."""

    def __init__(self, largest_bytes: int = MMAP_THRESHOLD_BYTES) -> None:
        self.largest_bytes = largest_bytes
        self._buffers: dict[tuple[int, torch.dtype], list[torch.Tensor]] = {}

    def take(self, size: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = math.prod(int(dim) for dim in size)
        if torch.device(device).type != "cpu" or numel * dtype.itemsize >= self.largest_bytes:
            return torch.empty(*size, dtype=dtype, device=device)
        buffers = self._buffers.setdefault((numel, dtype), [])
        buffer = next((buffer for buffer in buffers if not _in_use(buffer)), None)
        if buffer is None:
            buffer = torch.empty(numel, dtype=dtype)
            buffers.append(buffer)
        return buffer.view(*size)

    @property
    def held_bytes(self) -> int:
        return sum(buffer.numel() * buffer.element_size() for buffers in self._buffers.values() for buffer in buffers)


def _in_use(buffer: torch.Tensor) -> bool:
    """True while a tensor other than ``buffer`` itself (a view handed out, a gradient made of it) uses its
    storage. Counted: ``buffer``'s own reference and the one the temporary ``untyped_storage()`` holds."""
    return _storage_use_count(buffer.untyped_storage()._cdata) > 2


class PooledAllGather(AllGather):
    """FSDP2's default all-gather (``all_gather_single``) into a buffer from ``pool``."""

    def __init__(self, pool: BufferPool) -> None:
        self.pool = pool

    def allocate(self, size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return self.pool.take(size, dtype, device)

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: dist.ProcessGroup,
                 async_op: bool = False) -> dist.Work | None:
        return dist.all_gather_single(output_tensor, input_tensor, group=group, async_op=async_op)


class PooledReduceScatter(ReduceScatter):
    """FSDP2's default reduce-scatter (``reduce_scatter_single``) between buffers from ``pool``."""

    def __init__(self, pool: BufferPool) -> None:
        self.pool = pool

    def allocate(self, size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return self.pool.take(size, dtype, device)

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: dist.ProcessGroup, op,
                 async_op: bool = False) -> dist.Work | None:
        return dist.reduce_scatter_single(output=output_tensor, input=input_tensor, group=group, op=op,
                                          async_op=async_op)


_POOL = BufferPool()  # one per process: the units of every model a worker shards share it


def pool_collective_buffers(model: nn.Module) -> bool:
    """Give every FSDP unit of the sharded ``model`` this process's pooled collectives when its parameters are on
    the CPU. True when installed."""
    device = next((param.device for param in model.parameters()), None)
    if device is None or device.type != "cpu" or _storage_use_count is None:
        return False
    all_gather, reduce_scatter = PooledAllGather(_POOL), PooledReduceScatter(_POOL)
    for unit in model.modules():
        if isinstance(unit, FSDPModule):
            unit.set_custom_all_gather(all_gather)
            unit.set_custom_reduce_scatter(reduce_scatter)
    return True
