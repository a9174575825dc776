"""A run's timeline (start, resumes, checkpoints, notices, health alarms, failure, finish) and its health alarms.

``events.jsonl`` is the source when the run wrote one; older runs get a timeline inferred from ``metrics.jsonl``
(first and last logged step) and the checkpoint folders on disk. Health alarms come from two places: the ones the
run recorded (``kind = "health"`` events) and the ones :func:`rlhfctl.monitor.replay` finds when the report runs
the same checks over the logged metrics and samples with default thresholds.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Literal

from rlhfctl.monitor import Alarm, HealthSettings, replay
from rlhfctl.report.run_data import RunData
from rlhfctl.runfiles import EVENTS_FILE

Severity = Literal["info", "warn", "error"]


@dataclass(frozen=True)
class TimelineEntry:
    time: float | None  # Unix seconds (None when unknown)
    step: int | None
    kind: str  # start, resume, checkpoint, notice, health, failure, finish, last record
    message: str
    severity: Severity = "info"
    inferred: bool = False  # not from events.jsonl: read off metrics.jsonl, the checkpoint folders or a replay


@dataclass(frozen=True)
class FoundAlarm:
    alarm: Alarm
    recorded: bool  # True: in events.jsonl (raised during training); False: found by the report's replay


def run_alarms(run: RunData) -> list[FoundAlarm]:
    """Recorded alarms, then replayed ones that the run did not record itself (same check and step)."""
    recorded = [Alarm.from_record(event) for event in run.events_of("health")]
    seen = {(alarm.check, alarm.step) for alarm in recorded}
    replayed = replay(run.metric_rows, run.samples, health_settings(run))
    return ([FoundAlarm(alarm, True) for alarm in recorded]
            + [FoundAlarm(alarm, False) for alarm in replayed if (alarm.check, alarm.step) not in seen])


def health_settings(run: RunData) -> HealthSettings:
    """The thresholds the run was configured with: its resolved config's ``[monitor]`` section (the defaults when
    it has none, or one this version cannot read) and its response length limit (``generation.max_new_tokens``)."""
    from pydantic import ValidationError

    from rlhfctl.config.schema import MonitorConfig

    max_new_tokens = run.config.get("generation", {}).get("max_new_tokens")
    limit = max_new_tokens if isinstance(max_new_tokens, int) and max_new_tokens > 0 else None
    try:
        monitor = MonitorConfig.model_validate(run.config.get("monitor") or {})
    except ValidationError:
        monitor = MonitorConfig()
    return monitor.health_settings(max_response_tokens=limit)


def timeline(run: RunData, alarms: list[FoundAlarm] | None = None) -> list[TimelineEntry]:
    """Every entry in time order (entries without a time are placed by step)."""
    entries = _from_events(run) if run.events else _inferred(run)
    if alarms is None:
        alarms = run_alarms(run)
    step_time = _step_clock(run)
    for found in alarms:
        if found.recorded:
            continue  # already an entry from events.jsonl
        alarm = found.alarm
        entries.append(TimelineEntry(step_time(alarm.step), alarm.step, "health",
                                     f"{alarm.check} ({alarm.action}, found by the report): {alarm.message}",
                                     "error" if alarm.stops_run else "warn", inferred=True))
    entries.sort(key=lambda entry: (entry.time if entry.time is not None else step_time(entry.step) or 0,
                                    entry.step or 0))
    if run.train and not run.status().startswith(("finished", "failed")):
        last = run.train[-1]  # the end of what is known so far, after its checkpoint
        entries.append(TimelineEntry(last.get("time"), last["step"], "last record",
                                     f"last logged step {last['step']} ({run.status()})", "warn", inferred=True))
    return entries


def _from_events(run: RunData) -> list[TimelineEntry]:
    entries = []
    for event in run.events:
        kind, when, step = event.get("kind"), event.get("time"), event.get("step")
        when = when if isinstance(when, (int, float)) else None
        if kind == "start":
            start_step = event.get("start_step") or 0
            workers = f"{event.get('world_size', '?')} worker(s)"
            if start_step:
                entries.append(TimelineEntry(when, start_step, "resume",
                                             f"resumed from the checkpoint of step {start_step} on {workers}"))
            else:
                entries.append(TimelineEntry(when, 0, "start", f"started {event.get('stage', '')} on {workers}, "
                                                              f"{event.get('total_steps', '?')} steps"))
        elif kind == "checkpoint":
            entries.append(TimelineEntry(when, step, "checkpoint", f"checkpoint of step {step}"))
        elif kind == "notice":
            entries.append(TimelineEntry(when, step, "notice", str(event.get("message", "")), "warn"))
        elif kind == "health":
            alarm = Alarm.from_record(event)
            entries.append(TimelineEntry(when, alarm.step, "health", f"{alarm.check} ({alarm.action}): "
                                         f"{alarm.message}", "error" if alarm.stops_run else "warn"))
        elif kind == "failure":
            entries.append(TimelineEntry(when, step, "failure", str(event.get("message", "")), "error"))
        elif kind == "finish":
            entries.append(TimelineEntry(when, step, "finish", f"finished at step {step}"))
        else:
            entries.append(TimelineEntry(when, step, str(kind), str(event.get("message", kind))))
    return entries


def _inferred(run: RunData) -> list[TimelineEntry]:
    """No events.jsonl (a run from an older rlhfctl): what metrics.jsonl and the checkpoint folders tell."""
    entries = []
    rows = run.metric_rows
    if rows:
        first = rows[0]
        entries.append(TimelineEntry(first.get("time"), first["step"], "start",
                                     f"first logged step {first['step']} (inferred: no {EVENTS_FILE})",
                                     inferred=True))
    for checkpoint in run.checkpoints:
        entries.append(TimelineEntry(checkpoint.time, checkpoint.step, "checkpoint",
                                     f"checkpoint of step {checkpoint.step} on disk", inferred=True))
    if run.status() == "finished" and run.train:
        last = run.train[-1]
        times = [value for value in (last.get("time"), *(c.time for c in run.checkpoints)) if value is not None]
        entries.append(TimelineEntry(max(times, default=None), last["step"], "finish",
                                     f"finished at step {last['step']} (the model was exported)", inferred=True))
    return entries


def _step_clock(run: RunData):
    """A function step -> the time that step was logged (the nearest logged step at or after it)."""
    timed = sorted((row["step"], row["time"]) for row in run.train if isinstance(row.get("time"), (int, float)))
    steps = [step for step, _ in timed]

    def time_of(step: int | None) -> float | None:
        if step is None or not timed:
            return None
        index = min(bisect.bisect_left(steps, step), len(timed) - 1)
        return timed[index][1]

    return time_of
