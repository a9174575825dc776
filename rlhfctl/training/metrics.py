"""Driver side: turns progress events into ``metrics.jsonl``, ``samples.jsonl``, ``events.jsonl``, the trackers
(TensorBoard, W&B, MLflow: :mod:`rlhfctl.training.trackers`) and the live display.

``metrics.jsonl`` holds one JSON object per line: ``step``, ``epoch``, ``split``, ``time`` (when rank 0 logged
the step: Unix seconds on the worker's clock, so step durations can be read from the file) and the metric values. When a
run restarts from a checkpoint (a worker died, or ``--resume``), lines after the checkpoint's step are dropped
before the replayed steps are appended, so the file always describes one consistent run.

``events.jsonl`` is the run's timeline, append-only (restarts never trim it): one JSON object per line with
``time`` (Unix seconds) and ``kind``: ``start`` (``stage``, ``world_size``, ``start_step`` -- above 0 when the run
resumed or restarted from a checkpoint --, ``total_steps``, ``samples_per_step``, and ``trainable_parameters`` /
``total_parameters`` of the trained models when the stage reports them), ``checkpoint`` (``step``,
``path``), ``notice`` (``message``), ``finish`` (``step``, ``final_metrics``), ``failure`` (``step``: the last
logged train step, ``message``) and ``health`` (an alarm of :mod:`rlhfctl.monitor`: ``check``, ``action``,
``step``, ``split``, ``value``, ``threshold``, ``message``), recorded once per check and step (a restarted worker
group that raises it again is not recorded twice).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from rlhfctl.fileio import atomic_write_text
from rlhfctl.monitor import Alarm
from rlhfctl.progress.events import (
    CheckpointSaved,
    HealthAlarm,
    Notice,
    ProgressEvent,
    ProgressSink,
    RunFinished,
    RunStarted,
    SampleEvent,
    StepEvent,
)
from rlhfctl.runfiles import EVENTS_FILE, METRICS_FILE, SAMPLES_FILE
from rlhfctl.training.trackers import Tracker


def _json_line(record: dict[str, Any]) -> str:
    clean = {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
             for key, value in record.items()}
    return json.dumps(clean, ensure_ascii=False)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash: drop it
                continue
    return records


class MetricsRecorder:
    """Receives every event on the driver, keeps the history, writes the files, feeds the trackers, forwards to the
    sink. ``trackers`` are already open (:func:`rlhfctl.training.trackers.open_trackers`); it closes them."""

    def __init__(self, output_dir: Path, sink: ProgressSink, *, keep_existing: bool,
                 trackers: Sequence[Tracker] = ()) -> None:
        self.output_dir = Path(output_dir)
        self.sink = sink
        self.metrics_path = self.output_dir / METRICS_FILE
        self.samples_path = self.output_dir / SAMPLES_FILE
        self.events_path = self.output_dir / EVENTS_FILE
        self.history: list[dict[str, Any]] = read_jsonl(self.metrics_path) if keep_existing else []
        self.samples: list[dict[str, Any]] = read_jsonl(self.samples_path) if keep_existing else []
        self.last_step = max((int(row["step"]) for row in self.history if row.get("split") == "train"), default=0)
        self.parameters: tuple[int | None, int] | None = None  # (trainable, total) of the trained models, when told
        self._rewrite()
        if not keep_existing:
            atomic_write_text(self.events_path, "")
        self._alarms_recorded = {(record.get("check"), record.get("step")) for record in read_jsonl(self.events_path)
                                 if record.get("kind") == "health"}
        self._metrics_file: TextIO = open(self.metrics_path, "a", encoding="utf-8")
        self._samples_file: TextIO = open(self.samples_path, "a", encoding="utf-8")
        self.trackers = list(trackers)
        self.alarms: list[Alarm] = []  # the health alarms of this run (this process; earlier ones are in events.jsonl)
        self._failed = False
        self._closed = False

    def _rewrite(self) -> None:
        atomic_write_text(self.metrics_path, "".join(_json_line(row) + "\n" for row in self.history))
        atomic_write_text(self.samples_path, "".join(_json_line(row) + "\n" for row in self.samples))

    def handle(self, event: ProgressEvent) -> None:
        if isinstance(event, RunStarted):
            self._restart_at(event.start_step)
            record = {"kind": "start", "stage": event.stage, "world_size": event.world_size,
                      "start_step": event.start_step, "total_steps": event.total_steps,
                      "samples_per_step": event.samples_per_step}
            if event.total_parameters is not None:
                self.parameters = (event.trainable_parameters, event.total_parameters)
                record.update(trainable_parameters=event.trainable_parameters,
                              total_parameters=event.total_parameters)
            self.record_event(record, at=event.time)
        elif isinstance(event, CheckpointSaved):
            self.record_event({"kind": "checkpoint", "step": event.step, "path": event.path}, at=event.time)
        elif isinstance(event, Notice):
            self.record_event({"kind": "notice", "message": event.message}, at=event.time)
        elif isinstance(event, RunFinished):
            self.record_event({"kind": "finish", "step": event.steps, "final_metrics": {
                key: value if math.isfinite(value) else None for key, value in event.final_metrics.items()}},
                              at=event.time)
        elif isinstance(event, HealthAlarm):
            key = (event.alarm.check, event.alarm.step)
            if key in self._alarms_recorded:  # raised again by a worker group restarted from a checkpoint
                return
            self._alarms_recorded.add(key)
            self.alarms.append(event.alarm)
            self.record_event(event.alarm.to_record(), at=event.time)
            self._to_trackers("log_alarm", event.alarm)
        elif isinstance(event, StepEvent):
            if event.split != "train" and self._has_record(event.step, event.split):
                self.sink.handle(event)  # reported again by a resumed, already finished run: shown, not recorded
                return
            record = event.to_record()
            self.history.append(record)
            self._metrics_file.write(_json_line(record) + "\n")
            self._metrics_file.flush()
            if event.split == "train":
                self.last_step = max(self.last_step, event.step)
            self._to_trackers("log_metrics", event.step, event.split, event.metrics)
        elif isinstance(event, SampleEvent):
            for row in event.rows:
                record = {"step": event.step, **row}
                self.samples.append(record)
                self._samples_file.write(_json_line(record) + "\n")
            self._samples_file.flush()
        self.sink.handle(event)

    def record_event(self, record: dict[str, Any], *, at: float | None = None) -> None:
        """Append one timeline record to ``events.jsonl`` (opened per record: it works after :meth:`close` too)."""
        with open(self.events_path, "a", encoding="utf-8") as events_file:
            events_file.write(_json_line({"time": round(time.time() if at is None else at, 4), **record}) + "\n")

    def record_failure(self, message: str) -> None:
        self._failed = True
        self.record_event({"kind": "failure", "step": self.last_step, "message": message})

    def _to_trackers(self, method: str, *args: Any) -> None:
        """Call ``method`` on every open tracker; one that raises is closed and left out, with a notice."""
        if self._closed:
            return
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:
                self.trackers.remove(tracker)
                self.handle(Notice(f"the {tracker.name} tracker failed ({type(exc).__name__}: {exc}); it gets "
                                   "nothing more from this run (metrics.jsonl is complete)"))
                try:
                    tracker.close(failed=True)
                except Exception:  # already broken: nothing more to do with it
                    pass

    def _has_record(self, step: int, split: str) -> bool:
        return any(int(row["step"]) == step and row.get("split") == split for row in self.history)

    def _restart_at(self, start_step: int) -> None:
        """Forget what was logged after ``start_step`` (it will be replayed from the checkpoint)."""
        kept = [row for row in self.history if int(row["step"]) <= start_step]
        kept_samples = [row for row in self.samples if int(row["step"]) <= start_step]
        if len(kept) != len(self.history) or len(kept_samples) != len(self.samples):
            self.history, self.samples = kept, kept_samples
            self._metrics_file.close()
            self._samples_file.close()
            self._rewrite()
            self._metrics_file = open(self.metrics_path, "a", encoding="utf-8")
            self._samples_file = open(self.samples_path, "a", encoding="utf-8")
        self.last_step = max((int(r["step"]) for r in self.history if r.get("split") == "train"), default=start_step)

    def close(self) -> None:
        """Close the files and finish the trackers (as failed after :meth:`record_failure`); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._metrics_file.close()
        self._samples_file.close()
        for tracker in self.trackers:
            try:
                tracker.close(failed=self._failed)
            except Exception as exc:
                self.sink.handle(Notice(f"the {tracker.name} tracker failed to close: {type(exc).__name__}: {exc}"))
