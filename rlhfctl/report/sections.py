"""The HTML report's text sections: run summaries, health alarms, timeline table, samples and configs.

Plain functions returning HTML fragments; every value from a run is escaped.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from typing import Any

from rlhfctl.progress.render import format_duration, format_value
from rlhfctl.report.run_data import RunData
from rlhfctl.report.series import MISSING, config_diff
from rlhfctl.report.timeline import FoundAlarm, TimelineEntry
from rlhfctl.runfiles import RESOLVED_CONFIG_FILE

MAX_SAMPLE_STEPS = 12  # steps whose samples are shown per run (first, last and evenly between)
MAX_SUMMARY_METRICS = 8
SAMPLE_COLUMNS_FIRST = ("prompt", "response", "completion", "score", "reward", "kl")


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _when(unix_seconds: float | None) -> str:
    if unix_seconds is None:
        return ""
    return dt.datetime.fromtimestamp(unix_seconds).strftime("%Y-%m-%d %H:%M:%S")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"<td class=num>{_esc(format_value(value))}</td>"
    if isinstance(value, (int, bool)) or value is None:
        return f"<td class=num>{_esc('' if value is None else value)}</td>"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return f"<td class=text>{_esc(text)}</td>"


def status_class(status: str) -> str:
    return ("status-finished" if status == "finished" else "status-failed" if status.startswith("failed")
            else "status-running")


def wall_time_s(run: RunData) -> float | None:
    times = [row["time"] for row in run.metric_rows if isinstance(row.get("time"), (int, float))]
    times += [event["time"] for event in run.events if isinstance(event.get("time"), (int, float))]
    return max(times) - min(times) if len(times) > 1 else None


def notes_html(notes: list[str]) -> str:
    if not notes:
        return ""
    return "<ul class=notes>" + "".join(f"<li>{_esc(note)}</li>" for note in notes) + "</ul>"


def summary_cards(runs: list[RunData], alarms: list[list[FoundAlarm]]) -> str:
    cards = []
    for run, found in zip(runs, alarms):
        status = run.status()
        total = f" of {run.total_steps}" if run.total_steps else ""
        rows = [("folder", _esc(run.path)), ("stage", _esc(run.stage or "unknown")),
                ("status", f"<span class={status_class(status)}>{_esc(status)}</span>"),
                ("steps", f"{run.last_step}{total}"),
                ("wall time", _esc(format_duration(wall_time_s(run)))),
                ("checkpoints", _esc(", ".join(str(c.step) for c in run.checkpoints) or "none on disk")),
                ("health alarms", str(len(found)))]
        last_validation = run.validation[-1] if run.validation else {}
        shown = [(key, value) for key, value in last_validation.items()
                 if key not in ("step", "split", "time", "epoch")][:MAX_SUMMARY_METRICS]
        for key, value in shown:
            rows.append((f"validation {key}", _esc("NaN/inf" if value is None else format_value(value))))
        table = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
        cards.append(f"<div class=card><h3>{_esc(run.label)}</h3><table>{table}</table>"
                     f"{notes_html(run.notes)}</div>")
    return "<div class=cards>" + "".join(cards) + "</div>"


def alarms_html(runs: list[RunData], alarms: list[list[FoundAlarm]]) -> str:
    if not any(alarms):
        return ("<p class=empty>No health alarm: neither recorded during training nor found by the report's "
                "checks on the logged metrics and samples (default thresholds).</p>")
    parts = ["<table><tr><th>run</th><th>step</th><th>check</th><th>action</th><th>source</th>"
             "<th>message</th></tr>"]
    for run, found in zip(runs, alarms):
        for item in found:
            alarm = item.alarm
            severity = "sev-error" if alarm.stops_run else "sev-warn"
            source = "recorded during training" if item.recorded else "found by the report"
            parts.append(f"<tr><td>{_esc(run.label)}</td><td class=num>{alarm.step}</td>"
                         f"<td class={severity}>{_esc(alarm.check)}</td><td>{_esc(alarm.action)}</td>"
                         f"<td>{source}</td><td class=text>{_esc(alarm.message)}</td></tr>")
    parts.append("</table><p class=note>The report re-runs the health checks on the logged metrics and samples "
                 "with default thresholds; alarms recorded during training used the run's own settings.</p>")
    return "".join(parts)


def timeline_table(runs: list[RunData], timelines: list[list[TimelineEntry]]) -> str:
    parts = []
    for run, entries in zip(runs, timelines):
        heading = f"<h3>{_esc(run.label)}</h3>" if len(runs) > 1 else ""
        if not entries:
            parts.append(f"{heading}<p class=empty>Nothing recorded yet.</p>")
            continue
        rows = "".join(
            f"<tr><td>{_esc(_when(entry.time))}</td><td class=num>{'' if entry.step is None else entry.step}</td>"
            f"<td class=sev-{entry.severity}>{_esc(entry.kind)}{' (inferred)' if entry.inferred else ''}</td>"
            f"<td class=text>{_esc(entry.message)}</td></tr>" for entry in entries)
        parts.append(f"{heading}<table><tr><th>time</th><th>step</th><th>event</th><th>details</th></tr>{rows}"
                     "</table>")
    return "".join(parts)


def sample_steps(steps: list[int], limit: int = MAX_SAMPLE_STEPS) -> list[int]:
    """At most ``limit`` of the sampled steps: the first, the last and evenly spaced ones between."""
    distinct = sorted(set(steps))
    if len(distinct) <= limit:
        return distinct
    picks = {distinct[round(index * (len(distinct) - 1) / (limit - 1))] for index in range(limit)}
    return sorted(picks)


def samples_html(runs: list[RunData]) -> str:
    parts = []
    for run in [run for run in runs if run.samples]:
        steps = sample_steps([row["step"] for row in run.samples])
        all_steps = len({row["step"] for row in run.samples})
        columns: dict[str, None] = {}
        for name in SAMPLE_COLUMNS_FIRST:
            if any(name in row for row in run.samples):
                columns[name] = None
        for row in run.samples:
            for name in row:
                if name != "step":
                    columns.setdefault(name, None)
        heading = f"<h3>{_esc(run.label)}</h3>" if len(runs) > 1 else ""
        shown_note = (f"<p class=note>showing {len(steps)} of {all_steps} sampled steps (first, last and evenly "
                      "between); all rows are in samples.jsonl</p>" if len(steps) < all_steps else "")
        parts.append(heading + shown_note)
        for index, step in enumerate(steps):
            rows = [row for row in run.samples if row["step"] == step]
            header = "".join(f"<th>{_esc(name)}</th>" for name in columns)
            body = "".join("<tr>" + "".join(_cell(row.get(name)) for name in columns) + "</tr>" for row in rows)
            opened = " open" if index in (0, len(steps) - 1) else ""
            parts.append(f"<details{opened}><summary>step {step} ({len(rows)} samples)</summary>"
                         f"<table><tr>{header}</tr>{body}</table></details>")
    return "".join(parts)


def config_html(runs: list[RunData]) -> str:
    parts = []
    comparable = [run for run in runs if run.config]
    if len(comparable) > 1:
        differences = config_diff([run.config for run in comparable])
        if differences:
            header = "".join(f"<th>{_esc(run.label)}</th>" for run in comparable)
            rows = "".join(
                f"<tr><td>{_esc(key)}</td>"
                + "".join(f"<td class=text>{_esc('(not set)' if value is MISSING else _toml_value(value))}</td>"
                          for value in values) + "</tr>" for key, values in differences)
            parts.append(f"<h3>What differs</h3><table><tr><th>key</th>{header}</tr>{rows}</table>")
        else:
            parts.append("<p class=empty>The runs' resolved configs are identical.</p>")
    for run in runs:
        text = run.config_text if run.config_text is not None else f"(no {RESOLVED_CONFIG_FILE})"
        parts.append(f"<details{' open' if len(runs) == 1 else ''}><summary>{_esc(run.label)}: "
                     f"{RESOLVED_CONFIG_FILE}</summary><pre>{_esc(text)}</pre></details>")
    return "".join(parts)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
