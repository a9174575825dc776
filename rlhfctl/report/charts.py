"""What to plot, independent of the plotting library: :class:`Chart` objects the HTML page (plotly) and the PNG
images (matplotlib) both draw, so the two always show the same curves.

One chart per metric name (train and validation of every run overlaid), grouped into panels
(:data:`rlhfctl.report.series.GROUPS`); plus the reward-vs-KL frontier and the run's progress over time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlhfctl.report.run_data import RunData
from rlhfctl.report.series import (
    Series,
    decimate,
    frontier,
    grouped_keys,
    metric_keys,
    series,
    throughput,
)
from rlhfctl.report.timeline import TimelineEntry

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # the D3/tab10 colours: plotly's and matplotlib's defaults, one per run
MAX_POINTS = 1500  # per curve; longer series are decimated keeping extremes (see series.decimate)
TraceStyle = Literal["train", "validation", "points", "validation points", "front", "event"]
EVENT_SYMBOLS = {"start": "triangle-up", "resume": "triangle-right", "checkpoint": "circle", "notice": "square",
                 "health": "diamond", "failure": "x", "finish": "star", "last record": "hourglass"}


@dataclass(frozen=True)
class Trace:
    name: str  # legend entry
    run_index: int  # picks the colour
    x: list[float]  # steps, KL values, or Unix seconds (Chart.x_is_time)
    y: list[float | None]
    style: TraceStyle
    hover: list[str] | None = None
    symbol: str | None = None  # marker symbol for event traces (plotly names)


@dataclass(frozen=True)
class Chart:
    id: str  # unique, usable as an HTML id and a file name
    group: str
    title: str
    x_title: str
    y_title: str
    traces: list[Trace] = field(default_factory=list)
    x_is_time: bool = False
    note: str | None = None


def color(run_index: int) -> str:
    return PALETTE[run_index % len(PALETTE)]


def _trace_name(run: RunData, what: str, several: bool) -> str:
    return f"{run.label} · {what}" if several else what


def restart_steps(run: RunData) -> list[int]:
    return [event["start_step"] for event in run.events_of("start")
            if isinstance(event.get("start_step"), int) and event["start_step"] > 0]


def metric_charts(runs: list[RunData], max_points: int = MAX_POINTS) -> list[tuple[str, list[Chart]]]:
    """``[(group, charts)]``: one chart per metric found in any run, throughput derived from the log times."""
    several = len(runs) > 1
    per_run: list[dict[str, list[Series]]] = []
    keys: dict[str, None] = {}
    for run in runs:
        lines: dict[str, list[Series]] = {}
        for split, rows in (("train", run.train), ("validation", run.validation)):
            for key in metric_keys(rows):
                keys.setdefault(key, None)
                lines.setdefault(key, []).append(series(rows, key, split))
        for derived in throughput(run.train, run.samples_per_step, restart_steps(run)):
            keys.setdefault(derived.key, None)
            lines.setdefault(derived.key, []).append(derived)
        per_run.append(lines)
    groups = []
    numbered = 0
    for group, group_keys in grouped_keys(keys):
        charts = []
        for key in group_keys:
            traces, decimated = [], False
            for index, (run, lines) in enumerate(zip(runs, per_run)):
                for line in lines.get(key, []):
                    shown = decimate(line, max_points)
                    decimated = decimated or len(shown.steps) < len(line.steps)
                    traces.append(Trace(_trace_name(run, line.split, several), index, shown.steps, shown.values,
                                        "train" if line.split == "train" else "validation"))
            note = f"long curves drawn with at most ~{max_points} points (extremes kept)" if decimated else None
            numbered += 1
            charts.append(Chart(f"metric-{numbered}-{_slug(key)}", group, key, "step", key, traces, note=note))
        groups.append((group, charts))
    return groups


def frontier_chart(runs: list[RunData]) -> Chart | None:
    """Reward against KL per logged step (PPO/GRPO) and each run's upper-left frontier; None without KL."""
    traces = []
    axis_keys = None
    several = len(runs) > 1
    for index, run in enumerate(runs):
        train, held_out = frontier(run.train, "train"), frontier(run.validation, "validation")
        for points, style in ((train, "points"), (held_out, "validation points")):
            if points is None:
                continue
            axis_keys = axis_keys or (points.kl_key, points.reward_key)
            traces.append(Trace(_trace_name(run, points.split, several), index, points.kl, points.reward, style,
                                hover=[f"step {step}" for step in points.steps]))
        if train is not None:
            front = train.pareto()
            traces.append(Trace(_trace_name(run, "frontier", several), index, [p[0] for p in front],
                                [p[1] for p in front], "front"))
    if axis_keys is None:
        return None
    kl_key, reward_key = axis_keys
    return Chart("chart-frontier", "frontier", "Reward vs KL from the reference", f"KL ({kl_key}, nats)", reward_key,
                 traces, note="each point is one logged step; the line joins the steps no other step beats on "
                              "both reward and KL")


def timeline_chart(runs: list[RunData], timelines: list[list[TimelineEntry]]) -> Chart | None:
    """Train step against time per run, with the timeline's events as markers.

    One run: wall-clock time. Several runs: minutes since each run's first record, so they overlay.
    """
    traces = []
    several = len(runs) > 1
    for index, (run, entries) in enumerate(zip(runs, timelines)):
        timed = [(row["time"], row["step"]) for row in run.train if isinstance(row.get("time"), (int, float))]
        event_times = [entry.time for entry in entries if entry.time is not None]
        origin = min([t for t, _ in timed[:1]] + event_times, default=0.0) if several else None
        stride = max(1, len(timed) // MAX_POINTS)
        shown = timed[::stride] + ([timed[-1]] if timed and (len(timed) - 1) % stride else [])
        if shown:
            traces.append(Trace(_trace_name(run, "train step", several), index, [_x(t, origin) for t, _ in shown],
                                [s for _, s in shown], "train"))
        by_kind: dict[str, list[TimelineEntry]] = {}
        for entry in entries:
            if entry.time is not None:
                by_kind.setdefault(entry.kind, []).append(entry)
        for kind, kind_entries in by_kind.items():
            traces.append(Trace(_trace_name(run, kind, several), index, [_x(e.time, origin) for e in kind_entries],
                                [_step_at(e, timed) for e in kind_entries], "event",
                                hover=[entry.message for entry in kind_entries],
                                symbol=EVENT_SYMBOLS.get(kind, "circle")))
    if not traces:
        return None
    x_title = "minutes since the run's first record" if several else "time (local)"
    return Chart("chart-timeline", "timeline", "Progress and events over time", x_title, "train step", traces,
                 x_is_time=not several)


def _x(unix_seconds: float, origin: float | None) -> float:
    """Wall-clock seconds, or minutes since ``origin`` when runs are overlaid."""
    return unix_seconds if origin is None else (unix_seconds - origin) / 60


def _step_at(entry: TimelineEntry, timed: list[tuple[float, int]]) -> int:
    """The entry's step, or for one without (a notice) the last train step logged before it."""
    if entry.step is not None:
        return entry.step
    before = [step for when, step in timed if entry.time is not None and when <= entry.time]
    return before[-1] if before else 0


def _slug(text: str) -> str:
    return "".join(char if char.isalnum() else "-" for char in text.lower()).strip("-") or "metric"
