"""Reads back, from inside a process, whether glibc's malloc runs under rlhfctl's policy (tests only).

glibc raises its mmap threshold when a large mmapped block is freed; under the policy the threshold is fixed. So
after freeing a 16 MiB block, a 4 MiB block comes from a heap under glibc's defaults and is mmapped under the
policy: ``mallinfo2().hblkhd`` (bytes in mmapped blocks) says which.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

MiB = 1024**2
LARGE_BYTES = 16 * MiB
PROBE_BYTES = 4 * MiB


def mmaps_mid_sized_blocks() -> bool:
    """True when a 4 MiB block allocated after a 16 MiB one was freed is mmapped (the policy's fixed threshold)."""
    size_t = ctypes.c_size_t

    class MallInfo2(ctypes.Structure):  # defined here: Ray pickles this module by value, and ctypes fields cannot be
        _fields_ = [("arena", size_t), ("ordblks", size_t), ("smblks", size_t), ("hblks", size_t),
                    ("hblkhd", size_t), ("usmblks", size_t), ("fsmblks", size_t), ("uordblks", size_t),
                    ("fordblks", size_t), ("keepcost", size_t)]

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = MallInfo2
    libc.free(libc.malloc(ctypes.c_size_t(LARGE_BYTES)))
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(ctypes.c_size_t(PROBE_BYTES))
    mmapped = libc.mallinfo2().hblkhd - before >= PROBE_BYTES
    libc.free(block)
    return mmapped


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
