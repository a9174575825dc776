"""Gradient averaging through shared memory, for DDP workers that share one machine's CPU.

On CPU, DistributedDataParallel averages gradients with gloo: a ring all-reduce over TCP loopback, each byte
copied through the kernel twice per hop. On 2 cores with 2 workers that costs ~60 ms of a ~450 ms step for a
15 M-parameter model (measured, ``benchmarks/README.md``), time in which neither worker computes. When every
worker can map the others' files in ``/dev/shm``, this DDP communication hook does the same average with plain
memory reads instead:

    each gradient bucket:  this rank's gradients / world size into its slot  ->  barrier  ->  every rank sums
                           all slots, in rank order, straight into its bucket

Every rank adds the same numbers in the same order, so all ranks get bit-identical gradients (the replicas stay
in sync, as with gloo). Slots are double-buffered by step parity, so a fast rank writing the next step's bucket
never overwrites one a slower rank is still reading (it cannot get two steps ahead: each step has a barrier).
Each wrapped model gets its own files and barrier group; like DDP's own all-reduces, the buckets of several
models in one backward must come in the same order on every rank, which the autograd engine's deterministic
order gives for the same code (PPO backwards its policy and its value model one after the other).

:func:`attach` is collective and decides for everyone: any rank that cannot take part (no ``/dev/shm``, not
enough free space in it, the others' files not visible — e.g. workers on different nodes) leaves every rank on
DDP's gloo all-reduce. The files are unlinked as soon as all ranks have mapped them, so nothing is left behind
even if a worker is killed.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

SHM_DIRECTORY = Path("/dev/shm")
_ALIGN = 64  # bytes: every bucket starts on a cache line
_FREE_SPACE_MARGIN = 2.0  # leave as much again free in /dev/shm for everything else (Ray's object store, ...)


class SharedMemoryAverager:
    """The hook's state: the mapped slots and where the next bucket goes. Built by :func:`attach`."""

    def __init__(self, slots: list[Any], rank: int, world_size: int, group: Any, half_bytes: int):
        self._slots = slots  # one uint8 tensor per rank, each mapping that rank's shared file
        self._rank = rank
        self._world_size = world_size
        self._group = group  # a gloo group used only for this hook's barriers
        self._half_bytes = half_bytes  # one parity's region
        self._parity = 1
        self._offset = 0

    def average(self, bucket):
        import torch
        import torch.distributed as dist

        gradients = bucket.buffer()  # flat, this rank's gradients for the bucket
        if bucket.index() == 0:  # DDP runs the buckets of one backward in index order
            self._parity ^= 1
            self._offset = 0
        nbytes = gradients.numel() * gradients.element_size()
        start = self._parity * self._half_bytes + self._offset
        self._offset += -(-nbytes // _ALIGN) * _ALIGN
        if self._offset > self._half_bytes:
            raise RuntimeError(f"gradient buckets need more than the {self._half_bytes} bytes reserved")
        views = [slot[start:start + nbytes].view(gradients.dtype) for slot in self._slots]
        torch.div(gradients, self._world_size, out=views[self._rank])  # divided first, as DDP's own hook does
        dist.barrier(group=self._group)  # every rank's share is in its slot
        torch.add(views[0], views[1], out=gradients)
        for view in views[2:]:
            gradients.add_(view)
        future = torch.futures.Future()
        future.set_result(gradients)
        return future


def average_in_shared_memory(averager: SharedMemoryAverager, bucket):
    """The DDP communication hook: ``(state, GradBucket) -> Future`` of the averaged bucket."""
    return averager.average(bucket)


def attach(ddp_model, *, directory: Path = SHM_DIRECTORY) -> SharedMemoryAverager | None:
    """Register the shared-memory hook on ``ddp_model`` when every rank can use it; collective (all ranks call it).

    Returns the hook, or ``None`` when DDP keeps its own all-reduce (a single worker, a GPU model, a backend other
    than gloo, or any rank without a usable shared directory).
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    if dist.get_backend() != "gloo":
        return None
    params = [p for p in ddp_model.module.parameters() if p.requires_grad]
    on_cpu = all(p.device.type == "cpu" for p in params)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    # Every bucket padded to a cache line: at most one pad per parameter.
    half_bytes = sum(p.numel() * p.element_size() for p in params) + _ALIGN * len(params)
    size = 2 * half_bytes

    token = [uuid.uuid4().hex if rank == 0 else None]
    dist.broadcast_object_list(token, src=0)
    paths = [directory / f"rlhfctl-grads-{token[0]}-{r}" for r in range(world_size)]
    nonce = os.urandom(16)
    created = on_cpu and _create(paths[rank], size, nonce)
    nonces: list[Any] = [None] * world_size
    dist.all_gather_object(nonces, nonce if created else None)
    usable = created and all(n is not None for n in nonces) and all(
        _starts_with(path, expected) for path, expected in zip(paths, nonces))
    verdicts: list[Any] = [None] * world_size
    dist.all_gather_object(verdicts, usable)
    if not all(verdicts):
        if created:
            paths[rank].unlink(missing_ok=True)
        return None
    slots = [torch.from_file(str(path), shared=True, size=size, dtype=torch.uint8) for path in paths]
    dist.barrier()  # every rank has mapped every file: the names can go
    paths[rank].unlink(missing_ok=True)
    averager = SharedMemoryAverager(slots, rank, world_size, dist.new_group(backend="gloo"), half_bytes)
    ddp_model.register_comm_hook(averager, average_in_shared_memory)
    return averager


def _create(path: Path, size: int, nonce: bytes) -> bool:
    """This rank's file, its space reserved up front (a full tmpfs then fails here, not with SIGBUS later)."""
    try:
        stats = os.statvfs(path.parent)
        if stats.f_bavail * stats.f_frsize < size * _FREE_SPACE_MARGIN:
            return False
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except (OSError, AttributeError):  # no such directory, or no statvfs (Windows)
        return False
    try:
        os.posix_fallocate(descriptor, 0, size)
        os.pwrite(descriptor, nonce, 0)
    except (OSError, AttributeError):  # no space left, or no posix_fallocate (macOS)
        path.unlink(missing_ok=True)
        return False
    finally:
        os.close(descriptor)
    return True


def _starts_with(path: Path, nonce: bytes) -> bool:
    """Whether this rank sees ``path`` with the other rank's ``nonce`` in it (same machine, same /dev/shm)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(nonce)) == nonce
    except OSError:
        return False
