"""Where a run's workers go: ``training.num_training_workers`` (``"auto"`` or a number) resolved once, for the
driver, into a worker count and the resources of each worker (no torch, no Ray import).

``"auto"`` picks the fastest correct layout for the place the run starts:

- **one machine, CPUs only**: one worker in the driver process (no Ray start-up) using every CPU the process may
  run on — measured on 2 cores, one process with 2 threads trains as fast as 2 Ray workers of 1 thread and skips
  ~10 s of Ray and worker start-up;
- **one machine with GPUs**: one Ray Train worker per GPU (one GPU: in the driver process), each keeping
  ``resources_per_worker``'s CPUs;
- **a cluster** (``general.ray_address``): a number is required — how much of a shared cluster to take is the
  user's decision, not something to guess.

A number is always used as given (``1`` with no cluster address: the in-process path with
``resources_per_worker.CPU`` threads; ``2`` or more: Ray Train workers).

```python
layout = resolve_layout(config.training, config.general.ray_address, MachineResources.detect())
config = with_layout(config, layout)        # num_training_workers and resources_per_worker as the run uses them
layout.describe()                            # "1 worker x {2 CPU} in this process (auto: one machine, 2 CPUs, no GPU)"
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlhfctl.errors import ConfigError, ConfigIssue

AUTO = "auto"
WORKERS_KEY = "training.num_training_workers"
_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


@dataclass(frozen=True)
class MachineResources:
    """The CPUs this process may use and the GPUs it can see."""

    cpus: int
    gpus: int

    @classmethod
    def detect(cls) -> MachineResources:
        """Without importing torch: CPUs from the scheduler affinity (cgroup/taskset limits respected), GPUs from
        ``CUDA_VISIBLE_DEVICES`` when set, else the NVIDIA driver's device list."""
        return cls(cpus=usable_cpus(), gpus=visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), _NVIDIA_GPUS))


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def visible_gpus(cuda_visible_devices: str | None, driver_gpus: Path) -> int:
    """GPUs CUDA would show: the ``CUDA_VISIBLE_DEVICES`` list up to its first invalid entry (as CUDA reads it),
    or every device of the NVIDIA driver (``/proc/driver/nvidia/gpus/*``); 0 without the driver."""
    if cuda_visible_devices is not None:
        count = 0
        for entry in cuda_visible_devices.split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-") or entry.lower() == "nodevfiles":
                break
            count += 1
        return count
    try:
        return sum(1 for child in driver_gpus.iterdir() if child.is_dir())
    except OSError:
        return 0


@dataclass(frozen=True)
class WorkerLayout:
    """The workers a run uses, as resolved from the config and the machine."""

    workers: int
    resources_per_worker: dict[str, float]
    mode: Literal["local", "ray"]  # "local": one worker in the driver process
    reason: str = ""  # why "auto" chose this ("" for a number given in the config)

    @property
    def threads_per_worker(self) -> int:
        """torch threads of each worker: its whole CPUs, at least one."""
        return max(1, int(self.resources_per_worker.get("CPU", 0.0)))

    def describe(self, ray_address: str | None = None) -> str:
        """``2 workers x {1 CPU} on the embedded local Ray`` (+ `` (auto: ...)``)."""
        each = ", ".join(f"{amount:g} {name}" for name, amount in sorted(self.resources_per_worker.items()))
        where = ("in this process, no Ray start-up" if self.mode == "local"
                 else f"on the Ray cluster at {ray_address}" if ray_address else "on an embedded local Ray")
        text = f"{self.workers} worker{'s' if self.workers != 1 else ''} x {{{each}}} {where}"
        return f"{text} ({self.reason})" if self.reason else text


def resolve_layout(training: Any, ray_address: str | None, machine: MachineResources) -> WorkerLayout:
    """``training`` is a stage's ``[training]`` section (``num_training_workers``, ``resources_per_worker``).

    Raises ConfigError for ``"auto"`` with a cluster address (see the module docstring).
    """
    requested = training.num_training_workers
    resources = dict(training.resources_per_worker)
    if requested != AUTO:
        mode: Literal["local", "ray"] = "local" if requested == 1 and ray_address is None else "ray"
        return WorkerLayout(int(requested), resources, mode)
    if ray_address is not None:
        raise ConfigError([ConfigIssue(
            WORKERS_KEY, f'"auto" picks a layout for this machine; with general.ray_address = {ray_address!r} (a '
            "Ray cluster) give the number of workers to start there, e.g. num_training_workers = 4", AUTO)])
    if machine.gpus > 0:
        gpus_each = resources.get("GPU", 0.0) or 1.0
        workers = max(1, int(machine.gpus // gpus_each))
        resources["GPU"] = gpus_each
        reason = (f"auto: {machine.gpus} GPU{'s' if machine.gpus != 1 else ''} on this machine, "
                  f"{gpus_each:g} per worker")
        return WorkerLayout(workers, resources, "local" if workers == 1 else "ray", reason)
    resources["CPU"] = float(machine.cpus)  # a GPU asked for explicitly stays: the run then says none is there
    reason = f"auto: one machine, {machine.cpus} CPU{'s' if machine.cpus != 1 else ''}, no GPU"
    return WorkerLayout(1, resources, "local", reason)


def with_layout(config: Any, layout: WorkerLayout) -> Any:
    """A copy of the stage config whose ``[training]`` holds the layout's worker count and resources, so
    everything sized from the worker count (steps per epoch, data shards, batch totals, the memory plan) reads
    one number."""
    training = config.training.model_copy(update={"num_training_workers": layout.workers,
                                                  "resources_per_worker": dict(layout.resources_per_worker)})
    return config.model_copy(update={"training": training})


def resolve_config(config: Any, machine: MachineResources | None = None) -> tuple[Any, WorkerLayout]:
    """:func:`resolve_layout` + :func:`with_layout` for a stage config (the machine detected when not given)."""
    layout = resolve_layout(config.training, config.general.ray_address, machine or MachineResources.detect())
    return with_layout(config, layout), layout
