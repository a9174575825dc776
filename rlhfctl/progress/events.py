"""Progress events: what training workers tell the driver (plain dataclasses, no torch, no Ray).

Rank 0 of a run sends these, fire-and-forget, through the core's progress channel; the driver polls the channel
and hands every event to a :class:`ProgressSink` (see ``rlhfctl.progress.render``) and to the metrics writers.
Events are small and picklable: metric values are plain floats.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from rlhfctl.monitor.checks import Alarm

Split = Literal["train", "validation"]


@dataclass(frozen=True)
class RunLayout:
    """Where the run's workers go (the driver sends it first): the run's header line."""

    stage: str
    description: str  # "1 worker x {2 CPU} in this process (no Ray start-up) (auto: one machine, 2 CPUs, no GPU)"
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class PhaseStarted:
    """A start-up phase began (and the one before it ended): the driver's "reading data", "starting Ray",
    "starting 2 workers", a worker's "loading model", "tokenising 1,900 pairs"; :class:`RunStarted` begins the
    last one, the first step."""

    name: str
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class RunStarted:
    """The worker group is up (sent again after a restart from a checkpoint)."""

    stage: str
    total_steps: int
    start_step: int  # 0 for a fresh run, the checkpoint's step when resuming or restarting
    world_size: int
    samples_per_step: int  # examples (pairs, sequences, episodes) per optimizer step over all workers
    time: float = field(default_factory=time.time)
    trainable_parameters: int | None = None  # of the models the run trains (LoRA: adapters and heads)
    total_parameters: int | None = None  # of those models, frozen bases included (a shared base counted once)


@dataclass(frozen=True)
class StepEvent:
    """Metrics of one optimizer step (``split="train"``) or one validation pass (``split="validation"``)."""

    step: int
    epoch: int
    split: Split
    metrics: dict[str, float]
    time: float = field(default_factory=time.time)  # when rank 0 logged it (Unix seconds, the worker's clock)

    def to_record(self) -> dict[str, Any]:
        """The line written to ``metrics.jsonl``: step, epoch, split, the worker's ``time`` and the values."""
        return {"step": self.step, "epoch": self.epoch, "split": self.split, "time": round(self.time, 4),
                **self.metrics}


@dataclass(frozen=True)
class SampleEvent:
    """A few example rows (e.g. PPO's prompt, response, score) for ``samples.jsonl`` and the live display."""

    step: int
    rows: list[dict[str, Any]]
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class CheckpointSaved:
    """A checkpoint of ``step`` was written (``path`` as the worker saw it)."""

    step: int
    path: str
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class RunFinished:
    """The training loop returned on rank 0."""

    steps: int
    final_metrics: dict[str, float]
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Notice:
    """A message for the person watching (e.g. the config changed since the checkpoint being resumed)."""

    message: str
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class HealthAlarm:
    """A health check fired on the workers (:mod:`rlhfctl.monitor`): shown, and recorded in ``events.jsonl``."""

    alarm: Alarm
    time: float = field(default_factory=time.time)


ProgressEvent = (RunLayout | PhaseStarted | RunStarted | StepEvent | SampleEvent | CheckpointSaved | RunFinished
                 | Notice | HealthAlarm)


class ProgressSink(Protocol):
    """Receives every event on the driver (a live display, plain lines, or nothing)."""

    def handle(self, event: ProgressEvent) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """A sink that ignores everything (``--quiet`` and library use)."""

    def handle(self, event: ProgressEvent) -> None:  # noqa: D102 - protocol method
        return None

    def close(self) -> None:  # noqa: D102 - protocol method
        return None


class RecordingSink:
    """Keeps every event in ``events`` (tests and programmatic callers)."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []

    def handle(self, event: ProgressEvent) -> None:  # noqa: D102 - protocol method
        self.events.append(event)

    def close(self) -> None:  # noqa: D102 - protocol method
        return None
