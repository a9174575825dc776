"""Reads back, from inside a process, whether glibc's malloc runs under rlhfctl's policy (tests only).

glibc raises its mmap threshold when a large mmapped block is freed; under the policy the threshold is fixed. So
after freeing a 16 MiB block, a 4 MiB block comes from a heap under glibc's defaults and is mmapped under the
policy: the block's chunk header says which.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

MiB = 1024**2
LARGE_BYTES = 16 * MiB
PROBE_BYTES = 4 * MiB
IS_MMAPPED = 0x2  # glibc's chunk flag


def mmaps_mid_sized_blocks() -> bool:
    """True when a 4 MiB block allocated after a 16 MiB one was freed is mmapped (the policy's fixed threshold).

    Read from the block's own chunk header (glibc keeps the chunk size word just before the pointer; its bit 0x2 is
    IS_MMAPPED), not from ``mallinfo2()``'s process-wide mmapped total, which other threads of the same process
    (the in-process layout's data and progress threads) can move between two reads.
    """
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free(libc.malloc(LARGE_BYTES))
    block = libc.malloc(PROBE_BYTES)
    chunk_size_word = ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value
    libc.free(block)
    return bool(chunk_size_word & IS_MMAPPED)


@dataclass(frozen=True)
class NoPayload:
    """The probe loop's payload (here, not in the test module: Ray's workers unpickle it)."""


def probe_loop(loop_config) -> dict[str, float]:
    """A training loop that sets its worker up, as every stage does, and reports what the allocator does."""
    from rlhfctl.training.worker import setup_worker

    setup_worker(loop_config)
    return {"mmaps_mid_sized_blocks": float(mmaps_mid_sized_blocks())}


def probe_loop_with_release_requested(loop_config) -> dict[str, float]:
    """:func:`probe_loop` in a worker whose environment asks for the policy (``RLHFCTL_MALLOC=release``, as a
    cluster node's environment or the driver's, which the embedded Ray's workers inherit, would carry it)."""
    import os

    os.environ["RLHFCTL_MALLOC"] = "release"
    return probe_loop(loop_config)
