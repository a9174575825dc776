"""Does the requested worker group fit? A quick check made before anything starts (no Ray import).

Only the local machine can be checked here: with ``general.ray_address`` set, the cluster's resources are checked
by the training launcher when it connects. GPUs are counted the way ``"auto"`` counts them, without torch
(:mod:`rlhfctl.config.layout`); training checks again with torch when it starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfctl.config.layout import MachineResources, resolve_layout
from rlhfctl.config.schema import StageConfig
from rlhfctl.errors import ConfigError


@dataclass(frozen=True)
class ResourceNote:
    """One finding about the requested resources: a ``warning`` (likely will not fit) or ``info``."""

    level: Literal["warning", "info"]
    message: str


def check_resources(config: StageConfig, cpu_count: int | None = None,
                    gpu_count: int | None = None) -> list[ResourceNote]:
    """Compare ``num_training_workers x resources_per_worker`` with this machine (``cpu_count``/``gpu_count``: as
    detected by :class:`~rlhfctl.config.layout.MachineResources` when not given); ``"auto"`` is resolved first
    and said in an ``info`` note."""
    detected = MachineResources.detect() if cpu_count is None or gpu_count is None else None
    machine = MachineResources(cpus=cpu_count if cpu_count is not None else detected.cpus,
                               gpus=gpu_count if gpu_count is not None else detected.gpus)
    try:
        layout = resolve_layout(config.training, config.general.ray_address, machine)
    except ConfigError as exc:
        return [ResourceNote("warning", f"{issue.key}: {issue.message}") for issue in exc.issues]
    workers = layout.workers
    request = f"{workers} worker{'s' if workers != 1 else ''} x {_format_resources(layout.resources_per_worker)}"
    if config.general.ray_address:
        return [ResourceNote(
            "info",
            f"{request} will be checked against the Ray cluster at {config.general.ray_address} when training "
            "starts (training fails fast if the cluster cannot hold it)",
        )]
    notes = [ResourceNote("info", f"workers: {layout.describe()}")] if layout.reason else []
    cpus = machine.cpus
    needed_cpus = workers * layout.resources_per_worker.get("CPU", 0.0)
    if needed_cpus > cpus:
        notes.append(ResourceNote(
            "warning",
            f"{request} needs {_number(needed_cpus)} CPUs but this machine has {cpus}; the local Ray could not "
            "schedule it. Lower training.num_training_workers or training.resources_per_worker.CPU, or set "
            "general.ray_address to use a cluster",
        ))
    needed_gpus = workers * layout.resources_per_worker.get("GPU", 0.0)
    if needed_gpus > machine.gpus:
        notes.append(ResourceNote(
            "warning",
            f"{request} asks for {_number(needed_gpus)} GPU(s) but this machine shows {machine.gpus}; training "
            "checks again with torch when it starts. Remove training.resources_per_worker.GPU to train on CPUs",
        ))
    custom = sorted(name for name in layout.resources_per_worker if name not in ("CPU", "GPU"))
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
