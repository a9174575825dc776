"""glibc ``malloc`` policy for training processes: give freed tensor memory back to the system.

PyTorch's CPU tensors come from ``malloc``. glibc serves a block below its mmap threshold from a heap that keeps
freed space, and it raises that threshold each time a larger mmapped block is freed (up to 32 MiB on 64-bit
systems; the trim threshold follows at twice it). A training step frees activations of a few MiB by the hundred,
so after the first steps they all come from heaps whose freed pages stay resident and fragment: measured on a
~134 M-parameter Llama's PPO iteration, the whole tree peaks at 4.22 GiB (LoRA) and 5.48 GiB (full parameters)
under glibc's defaults, and at 2.32 / 4.03 GiB with the threshold fixed at 128 KiB (benchmarks/README.md).

:func:`apply_training_policy` fixes the thresholds with ``mallopt`` (which also turns glibc's dynamic adjustment
off), once per process, at the start of every training worker (Ray Train workers and the in-process layout:
:func:`rlhfctl.training.worker.setup_worker` calls it). :func:`release_free_memory` (``malloc_trim(0)``) hands
back what the heaps still hold at phase boundaries: after the models are built (and sharded), after a checkpoint,
after the export. An FSDP worker on CPU trims at those boundaries and after every optimizer step whatever the
policy (``sharded_on_cpu``): its units' gathers and full gradients churn the heap every step, and a trim costs it
far less than the policy's fixed threshold does.

Opt-in: ``RLHFCTL_MALLOC=release`` in the environment (of the driver, which the embedded Ray's workers inherit;
on a joined cluster, in the nodes' environment) turns it on; unset or ``default`` keeps glibc's defaults, and so do
glibc's own ``MALLOC_MMAP_THRESHOLD_``-style settings or ``GLIBC_TUNABLES`` (the user's choice wins). It is not the
default because every tensor above the threshold is then mapped and page-faulted afresh: measured on 2 Ray
workers x 1 CPU with a ~60 M-parameter Llama (gradient checkpointing), steps were 29-43 % slower (DDP RM 1.036 ->
0.588 pairs/s, FSDP RM 0.842 -> 0.601) for 20-45 % less memory (benchmarks/README.md). Off glibc (macOS, musl)
nothing is changed and a debug line says so.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from rlhfctl.errors import UserError

logger = logging.getLogger(__name__)

KiB = 1024
POLICY_ENV = "RLHFCTL_MALLOC"  # "default" (glibc's own behaviour, when unset) or "release" (the policy)
POLICY_VALUES = ("default", "release")
# glibc's own environment settings for what the policy sets; when any is present the user's choice wins
GLIBC_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


@dataclass(frozen=True)
class AllocatorPolicy:
    """Fixed glibc thresholds: blocks of ``mmap_threshold_bytes`` or more are mmapped (and unmapped when freed);
    the heap's top is given back once ``trim_threshold_bytes`` of it are free."""

    mmap_threshold_bytes: int
    trim_threshold_bytes: int


TRAINING_POLICY = AllocatorPolicy(mmap_threshold_bytes=1024 * KiB, trim_threshold_bytes=2048 * KiB)

Outcome = Literal["applied", "not requested", "glibc settings in the environment", "not glibc", "mallopt refused"]

_applied: Outcome | None = None  # once per process


class _Glibc:
    """The two glibc calls the policy makes (a fake stands in for it in tests)."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._libc = libc

    def mallopt(self, parameter: int, value: int) -> bool:
        return bool(self._libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(value)))

    def malloc_trim(self) -> bool:
        return bool(self._libc.malloc_trim(ctypes.c_size_t(0)))


@functools.cache
def load_glibc() -> _Glibc | None:
    """This process's C library when it is glibc (it has ``gnu_get_libc_version``), else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    return _Glibc(libc)


def policy_requested(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for the policy: ``RLHFCTL_MALLOC=release`` and no glibc malloc setting of the
    user's own. Raises UserError for a value of ``RLHFCTL_MALLOC`` it does not know."""
    requested = environ.get(POLICY_ENV, "default").strip().lower() or "default"
    if requested not in POLICY_VALUES:
        raise UserError(f"environment variable {POLICY_ENV}={environ[POLICY_ENV]!r}: expected one of "
                        f"{', '.join(POLICY_VALUES)}",
                        hint=f"{POLICY_ENV}=release makes training processes give freed memory back (less memory, "
                             "slower steps); unset it or set default to keep glibc's own malloc behaviour")
    return requested == "release" and not _user_glibc_settings(environ)


def _user_glibc_settings(environ: Mapping[str, str]) -> bool:
    return any(name in environ for name in GLIBC_MALLOC_ENV) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def apply_training_policy(environ: Mapping[str, str] | None = None,
                          glibc: Callable[[], _Glibc | None] = load_glibc) -> Outcome:
    """Apply :data:`TRAINING_POLICY` to this process (once; later calls return the first outcome)."""
    global _applied
    if _applied is not None:
        return _applied
    environ = os.environ if environ is None else environ
    libc = glibc()
    if not policy_requested(environ):
        _applied = "glibc settings in the environment" if _user_glibc_settings(environ) else "not requested"
    elif libc is None:
        _applied = "not glibc"
    elif libc.mallopt(M_MMAP_THRESHOLD, TRAINING_POLICY.mmap_threshold_bytes) and \
            libc.mallopt(M_TRIM_THRESHOLD, TRAINING_POLICY.trim_threshold_bytes):
        _applied = "applied"
    else:
        _applied = "mallopt refused"
    logger.debug("malloc policy %s: %s", TRAINING_POLICY, _applied)
    return _applied


def planned_mmap_threshold(environ: Mapping[str, str] | None = None) -> int | None:
    """The mmap threshold the training processes will run with, for the memory plan: the policy's where it will be
    applied (glibc, ``RLHFCTL_MALLOC=release``), else None (glibc's dynamic threshold, or another C library)."""
    environ = os.environ if environ is None else environ
    if load_glibc() is None or not policy_requested(environ):
        return None
    return TRAINING_POLICY.mmap_threshold_bytes


def release_free_memory(glibc: Callable[[], _Glibc | None] = load_glibc, *, sharded_on_cpu: bool = False) -> bool:
    """``malloc_trim(0)``: give the heaps' free pages back to the system (a phase boundary's leftovers). In a process
    the policy was applied to, and in an FSDP worker on CPU (``sharded_on_cpu``) whatever the policy: there every
    step gathers and frees each unit's full parameters and gradients, and glibc's heap keeps what they leave free
    (benchmarks/README.md, "Sharded training", fsdp7). True when memory was released."""
    if _applied != "applied" and not sharded_on_cpu:
        return False
    libc = glibc()
    return libc is not None and libc.malloc_trim()
