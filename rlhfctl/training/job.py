"""A stage's job for the core: what the recipe's ``build_job`` returns (:class:`TrainingJob`), the printable plan of
it (:class:`TrainingPlan`, ``--dry-run``) and the result of running it (:class:`RunSummary`).

Plain descriptions: the recipes (also on the workers) import this module, and :mod:`rlhfctl.training.launch`
runs what it describes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal

from rlhfctl.config.layout import WorkerLayout
from rlhfctl.monitor import Alarm
from rlhfctl.training.memory_plan import MemoryPlan, Probe, plan_memory, probe_for_job
from rlhfctl.training.run_directory import RunPaths
from rlhfctl.training.stage_workload import StageWorkload
from rlhfctl.training.worker import ConfigT, CoreSettings, LoopConfig, PayloadT


@dataclass
class TrainingJob(Generic[ConfigT, PayloadT]):
    """Everything the driver needs to run one stage. Built by the recipe's ``build_job``."""

    stage: str
    config: ConfigT  # the stage's validated config (SFTConfig, RMConfig, PPOConfig, ...)
    train_loop: Callable[[LoopConfig], dict[str, float]]  # module-level (picklable) function run on every worker
    payload: PayloadT  # the recipe's frozen dataclass: what every worker needs besides the config
    total_steps: int  # optimizer steps of the whole run
    samples_per_step: int  # examples per optimizer step over all workers (for samples/s)
    train_rows: int | None = None  # for the plan
    validation_rows: int | None = None
    steps_per_epoch: int | None = None
    plan_notes: dict[str, str] = field(default_factory=dict)  # stage-specific lines for the plan ("max length": ..)
    warnings: tuple[str, ...] = ()  # shown as the plan's last lines and logged when the run starts
    layout: WorkerLayout | None = None  # set by prepare_job: how "auto" was resolved (None: config taken as is)
    # The recipe's memory hook: the stage's workload (models, phases) for a config like this one, with this job's
    # data; the memory plan (--dry-run) and the pre-flight check estimate from it (training/memory_plan.py).
    memory: Callable[[ConfigT], StageWorkload] | None = None

    def __post_init__(self) -> None:
        self.warnings = (*self.warnings, *strategy_warnings(self.config.training))

    def loop_config(self, core: CoreSettings) -> LoopConfig:
        """What ``train_loop`` receives on every worker (unpacked there by ``setup_worker``)."""
        return LoopConfig(config=self.config, payload=self.payload, core=core)

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.stage, self.config)

    @property
    def output_dir(self) -> Path:
        return self.paths.output_dir

    @property
    def checkpoint_dir(self) -> Path:
        return self.paths.checkpoint_dir

    @property
    def run_name(self) -> str:
        return self.paths.run_name

    @property
    def run_dir(self) -> Path:
        """Ray Train's experiment folder (``storage_path/name``): the checkpoints live here."""
        return self.paths.run_dir

    @property
    def mode(self) -> Literal["ray", "local"]:
        if self.layout is not None:
            return self.layout.mode
        single = self.config.training.num_training_workers == 1 and self.config.general.ray_address is None
        return "local" if single else "ray"

    def plan(self, memory_probe: Probe | None = probe_for_job) -> "TrainingPlan":
        training = self.config.training
        ray_address = self.config.general.ray_address
        return TrainingPlan(
            stage=self.stage, mode=self.mode, workers=training.num_training_workers,
            resources_per_worker=dict(training.resources_per_worker), ray_address=ray_address,
            train_rows=self.train_rows, validation_rows=self.validation_rows, epochs=training.epochs,
            steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
            samples_per_step=self.samples_per_step, output_dir=self.output_dir, run_dir=self.run_dir,
            checkpoint_dir=self.checkpoint_dir,
            notes={**self.plan_notes, **{f"warning {number}": text for number, text in enumerate(self.warnings, 1)}},
            memory=plan_memory(self, memory_probe), layout=self.layout.describe(ray_address) if self.layout else "",
        )


def strategy_warnings(training: Any) -> tuple[str, ...]:
    """``training.strategy = "fsdp"`` with one worker runs as DDP: nothing to shard over (every stage's job)."""
    if training.strategy == "fsdp" and training.num_training_workers == 1:
        return ('training.strategy = "fsdp" with one worker runs as "ddp": sharding needs at least two workers '
                "(set training.num_training_workers, or leave the strategy at ddp)",)
    return ()


@dataclass(frozen=True)
class TrainingPlan:
    """What a run would do (``--dry-run`` prints this)."""

    stage: str
    mode: str
    workers: int
    resources_per_worker: dict[str, float]
    ray_address: str | None
    train_rows: int | None
    validation_rows: int | None
    epochs: int
    steps_per_epoch: int | None
    total_steps: int
    samples_per_step: int
    output_dir: Path
    run_dir: Path
    checkpoint_dir: Path
    notes: dict[str, str]
    memory: MemoryPlan | None = None
    layout: str = ""  # WorkerLayout.describe(): the workers, where they run, and why when "auto" chose them

    def to_dict(self) -> dict[str, Any]:
        """The plan as one JSON-ready object (``--dry-run --json``)."""
        data: dict[str, Any] = {
            "stage": self.stage, "mode": self.mode, "workers": self.workers,
            "resources_per_worker": dict(self.resources_per_worker), "ray_address": self.ray_address,
            "train_rows": self.train_rows, "validation_rows": self.validation_rows, "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "samples_per_step": self.samples_per_step, "output_dir": str(self.output_dir),
            "run_dir": str(self.run_dir), "checkpoint_dir": str(self.checkpoint_dir),
            "layout": self.layout,
            "notes": {name: text for name, text in self.notes.items() if not name.startswith("warning ")},
            "warnings": [text for name, text in self.notes.items() if name.startswith("warning ")],
        }
        data["memory"] = self.memory.to_dict() if self.memory is not None else None
        return data


@dataclass(frozen=True)
class RunSummary:
    """The result of :func:`run_training`."""

    stage: str
    final_metrics: dict[str, float]
    history: list[dict]
    steps: int
    output_dir: Path
    checkpoint_dir: Path
    wall_time_s: float
    resumed_from_step: int | None = None
    parameters: tuple[int | None, int] | None = None  # (trainable, total) of the trained models, as the run reported
    alarms: tuple[Alarm, ...] = ()  # health warnings raised during the run (a stop alarm raises instead)
