"""How much memory one training worker may use: RAM on CPU, the device's memory on GPU. No torch in the driver.

```python
capacity = probe_this_machine(workers=2, use_gpu=False, gpus_per_worker=0, ray_processes=True)
capacity.bytes_per_worker, capacity.source     # 9.3 GiB, "MemAvailable 20.1 GiB in /proc/meminfo, ..."
```

- **CPU**: ``MemAvailable`` of ``/proc/meminfo``, lowered to what the process's cgroup still allows (v2
  ``memory.max - memory.current``, v1 ``memory.limit_in_bytes - memory.usage_in_bytes``, reclaimable page cache
  added back), minus what Ray's own processes take when a local Ray starts (:data:`RAY_PROCESSES_BYTES`), shared
  by the workers on this machine. The driver process, when it is the worker, gives its own resident memory back.
- **GPU** on this machine: ``nvidia-smi`` (the driver never imports torch); a worker's share is the device's total
  memory times ``gpus_per_worker`` when workers share a device. Without ``nvidia-smi`` — or on a cluster joined by
  address — each worker checks its own device when it starts (:func:`probe_worker_device`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

GiB = 1024**3
UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a page-rounded 2**63 - 1
# PSS of a local Ray instance's own processes during a run (GCS, raylet, dashboard and runtime-env agents, Ray
# Train's controller and its helper actors, rlhfctl's progress queue): ~1.4 GB measured (benchmarks/README.md).
RAY_PROCESSES_BYTES = int(1.4 * GiB)


@dataclass(frozen=True)
class DeviceMemory:
    """The memory one worker may use, and where the number came from (for the messages)."""

    bytes_per_worker: int
    device: Literal["cpu", "cuda"]
    source: str


def format_bytes(count: float) -> str:
    """``1536 MiB`` -> ``"1.5 GiB"``; below 1 GiB in MiB (``"<1 MiB"`` for a few bytes)."""
    if abs(count) >= GiB:
        return f"{count / GiB:.1f} GiB"
    if 0 < abs(count) < 1024**2 / 2:
        return "<1 MiB"
    return f"{count / 1024**2:.0f} MiB"


# ----------------------------------------------------------------------------------------------- CPU


def read_meminfo(path: Path = Path("/proc/meminfo")) -> dict[str, int]:
    """``/proc/meminfo`` as bytes by field name (``{"MemTotal": ..., "MemAvailable": ...}``); ``{}`` if unreadable."""
    values: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except OSError:
        return values
    for line in lines:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name.strip()] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return values


def cgroup_headroom(proc_cgroup: Path = Path("/proc/self/cgroup"),
                    root: Path = Path("/sys/fs/cgroup")) -> tuple[int, str] | None:
    """Bytes this process's memory cgroup still allows (limit - usage + reclaimable file cache), or None when it
    sets no limit. cgroup v2 and v1; the tightest limit on the path to the root wins."""
    try:
        entries = proc_cgroup.read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for entry in entries:
        _, controllers, group = (entry.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2 unified
            candidates = [(root / group.lstrip("/"), "memory.max", "memory.current", "inactive_file")]
        elif "memory" in controllers.split(","):
            candidates = [(root / "memory" / group.lstrip("/"), "memory.limit_in_bytes", "memory.usage_in_bytes",
                           "total_inactive_file")]
        else:
            continue
        folder, limit_name, usage_name, cache_name = candidates[0]
        for level in [folder, *folder.parents]:
            if not str(level).startswith(str(root)):
                break
            headroom = _headroom_at(level, limit_name, usage_name, cache_name)
            if headroom is not None and (best is None or headroom < best[0]):
                best = (headroom, f"cgroup limit in {level / limit_name}")
    return best


def _headroom_at(folder: Path, limit_name: str, usage_name: str, cache_name: str) -> int | None:
    try:
        limit_text = (folder / limit_name).read_text(encoding="ascii").strip()
        usage = int((folder / usage_name).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None
    if limit_text == "max" or not limit_text.isdigit() or int(limit_text) >= UNLIMITED:
        return None
    reclaimable = 0
    try:
        for line in (folder / "memory.stat").read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == cache_name and value.strip().isdigit():
                reclaimable = int(value)
    except OSError:
        pass
    return max(0, int(limit_text) - usage + reclaimable)


def own_resident_bytes(statm: Path = Path("/proc/self/statm")) -> int:
    """This process's resident memory (it is already counted as used, yet it is the worker in local mode)."""
    try:
        return int(statm.read_text(encoding="ascii").split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def available_ram(meminfo: Path = Path("/proc/meminfo"), proc_cgroup: Path = Path("/proc/self/cgroup"),
                  cgroup_root: Path = Path("/sys/fs/cgroup")) -> tuple[int, str] | None:
    """RAM a new process could use now: ``MemAvailable``, lowered to the cgroup's headroom. None if unknown."""
    available = read_meminfo(meminfo).get("MemAvailable")
    if available is None:
        return None
    source = f"MemAvailable {format_bytes(available)} in {meminfo}"
    headroom = cgroup_headroom(proc_cgroup, cgroup_root)
    if headroom is not None and headroom[0] < available:
        available, source = headroom[0], f"{format_bytes(headroom[0])} left under the {headroom[1]}"
    return available, source


# ----------------------------------------------------------------------------------------------- GPU


def nvidia_smi_total_bytes(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> int | None:
    """The smallest total memory of this machine's GPUs per ``nvidia-smi``; None without it."""
    if run is subprocess.run and shutil.which("nvidia-smi") is None:
        return None
    try:
        completed = run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                        capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    totals = [int(float(line)) for line in completed.stdout.split() if line.replace(".", "", 1).isdigit()]
    if completed.returncode != 0 or not totals:
        return None
    return min(totals) * 1024**2  # MiB


# ----------------------------------------------------------------------------------------------- probes


def probe_this_machine(*, workers: int, use_gpu: bool, gpus_per_worker: float, ray_processes: bool,
                       in_driver: bool = False,
                       gpu_total: Callable[[], int | None] = nvidia_smi_total_bytes,
                       ram: Callable[[], tuple[int, str] | None] = available_ram,
                       own_bytes: Callable[[], int] = own_resident_bytes) -> DeviceMemory | None:
    """One worker's share of this machine (all ``workers`` run here). None when it cannot be known here."""
    if use_gpu:
        total = gpu_total()
        if total is None:
            return None
        share = min(1.0, gpus_per_worker) if gpus_per_worker > 0 else 1.0
        return DeviceMemory(int(total * share), "cuda",
                            f"GPU memory {format_bytes(total)} (nvidia-smi)"
                            + (f" x {share:g} GPU per worker" if share < 1 else ""))
    found = ram()
    if found is None:
        return None
    available, source = found
    if in_driver:
        own = own_bytes()
        available += own
        source += f" + this process's {format_bytes(own)}"
    if ray_processes:
        available -= RAY_PROCESSES_BYTES
        source += f" - ~{format_bytes(RAY_PROCESSES_BYTES)} for Ray's processes"
    if workers > 1:
        source += f", shared by {workers} workers"
    return DeviceMemory(max(0, available // max(workers, 1)), "cpu", source)


def probe_worker_device(device, local_workers: int, gpu_share: float = 1.0) -> DeviceMemory | None:
    """On a worker: its GPU's total memory (torch) times its share of the GPU, or this node's available RAM shared
    by the node's workers."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        total = int(torch.cuda.get_device_properties(device).total_memory)
        share = min(1.0, gpu_share) if gpu_share > 0 else 1.0
        return DeviceMemory(int(total * share), "cuda", f"{torch.cuda.get_device_name(device)}: {format_bytes(total)}"
                            + (f" x {share:g} GPU per worker" if share < 1 else ""))
    found = available_ram()
    if found is None:
        return None
    available, source = found
    own = own_resident_bytes()
    return DeviceMemory((available + own) // max(local_workers, 1), "cpu",
                        f"{source} + this worker's {format_bytes(own)}, shared by {local_workers} workers on this node")
