"""Does the requested worker group fit? A quick check made before anything starts (no Ray import).

Only the local machine can be checked here: with ``general.ray_address`` set, the cluster's resources are checked
by the training launcher when it connects. GPUs cannot be counted without importing torch, so a GPU request on the
local machine is noted, not counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from rlhfctl.config.schema import StageConfig


@dataclass(frozen=True)
class ResourceNote:
    """One finding about the requested resources: a ``warning`` (likely will not fit) or ``info``."""

    level: Literal["warning", "info"]
    message: str


def check_resources(config: StageConfig, cpu_count: int | None = None) -> list[ResourceNote]:
    """Compare ``num_training_workers x resources_per_worker`` with this machine (``cpu_count``: os.cpu_count())."""
    training = config.training
    workers = training.num_training_workers
    request = f"{workers} worker{'s' if workers != 1 else ''} x {_format_resources(training.resources_per_worker)}"
    if config.general.ray_address:
        return [ResourceNote(
            "info",
            f"{request} will be checked against the Ray cluster at {config.general.ray_address} when training "
            "starts (training fails fast if the cluster cannot hold it)",
        )]
    notes = []
    cpus = cpu_count if cpu_count is not None else os.cpu_count()
    needed_cpus = workers * training.cpus_per_worker
    if cpus is not None and needed_cpus > cpus:
        notes.append(ResourceNote(
            "warning",
            f"{request} needs {_number(needed_cpus)} CPUs but this machine has {cpus}; the local Ray could not "
            "schedule it. Lower training.num_training_workers or training.resources_per_worker.CPU, or set "
            "general.ray_address to use a cluster",
        ))
    if training.gpus_per_worker > 0:
        notes.append(ResourceNote(
            "info",
            f"{request} asks for {_number(workers * training.gpus_per_worker)} GPU(s); this machine's GPUs are "
            "counted when training starts",
        ))
    custom = sorted(name for name in training.resources_per_worker if name not in ("CPU", "GPU"))
    if custom:
        notes.append(ResourceNote(
            "warning",
            f"custom resource(s) {', '.join(custom)} exist only on a Ray cluster that declares them; the embedded "
            "local Ray has none, so set general.ray_address or remove them",
        ))
    return notes


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _format_resources(resources: dict[str, float]) -> str:
    return "{ " + ", ".join(f"{name} = {_number(amount)}" for name, amount in resources.items()) + " }"
