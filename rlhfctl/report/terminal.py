"""``rlhfctl report`` without ``-o``: a compact Rich summary per run, one sparkline per metric and split.

The console is injected (tests render to ``Console(file=StringIO(), width=...)``).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rlhfctl.progress.render import format_duration, format_value
from rlhfctl.report.run_data import RunData
from rlhfctl.report.sections import status_class, wall_time_s
from rlhfctl.report.series import MISSING, config_diff, grouped_keys, metric_keys, series
from rlhfctl.report.timeline import FoundAlarm, run_alarms, timeline

BLOCKS = "▁▂▃▄▅▆▇█"
SPARKLINE_WIDTH = 24
TIMELINE_ENTRIES_SHOWN = 6
STATUS_STYLE = {"status-finished": "green", "status-failed": "bold red", "status-running": "yellow"}


def sparkline(values: Sequence[float | None], width: int = SPARKLINE_WIDTH) -> str:
    """``values`` squeezed into ``width`` block characters (bucket means; a bucket of only NaN/inf is a space)."""
    if not values:
        return ""
    width = min(width, len(values))
    buckets: list[float | None] = []
    for index in range(width):
        start, end = index * len(values) // width, (index + 1) * len(values) // width
        finite = [value for value in values[start:end] if value is not None]
        buckets.append(sum(finite) / len(finite) if finite else None)
    finite_buckets = [value for value in buckets if value is not None]
    if not finite_buckets:
        return " " * width
    low, high = min(finite_buckets), max(finite_buckets)
    span = high - low
    if span <= 1e-9 * max(abs(low), abs(high)):  # constant up to float rounding (a fixed learning rate)
        span = 0.0
    return "".join(" " if value is None else BLOCKS[3] if span == 0 else
                   BLOCKS[min(len(BLOCKS) - 1, int((value - low) / span * len(BLOCKS)))] for value in buckets)


def print_summary(runs: list[RunData], console: Console) -> None:
    wide = console.width >= 100  # narrower terminals leave out the "first" column
    trend_width = max(8, min(SPARKLINE_WIDTH, console.width - (88 if wide else 72)))
    for run in runs:
        alarms = run_alarms(run)
        console.print(_run_panel(run, alarms, trend_width, wide=wide))
    comparable = [run for run in runs if run.config]
    if len(comparable) > 1:
        console.print(_config_diff_table(comparable))
    console.print("[dim]Write the interactive report with -o report.html (and images with --png DIR).[/]")


def _run_panel(run: RunData, alarms: list[FoundAlarm], trend_width: int, *, wide: bool) -> Panel:
    status = run.status()
    style = STATUS_STYLE[status_class(status)]
    total = f" of {run.total_steps}" if run.total_steps else ""
    latest = f" (latest {run.checkpoints[-1].step})" if run.checkpoints else ""
    header = Text.from_markup(
        f"stage [bold]{escape(run.stage or 'unknown')}[/] · [{style}]{escape(status)}[/] · step {run.last_step}"
        f"{total} · wall time {format_duration(wall_time_s(run))} · {len(run.checkpoints)} checkpoint(s){latest} "
        f"· {len(alarms)} health alarm(s)")
    parts: list = [header, _metrics_table(run, trend_width, wide=wide)]
    for found in alarms:
        alarm = found.alarm
        source = "" if found.recorded else " (found by the report)"
        colour = "red" if alarm.stops_run else "yellow"
        parts.append(Text.from_markup(f"[{colour}]{escape(alarm.check)}[/] at step {alarm.step}{source}: "
                                      f"{escape(alarm.message)}"))
    entries = timeline(run, alarms)
    if entries:
        parts.append(Text("timeline:", style="bold"))
        hidden = len(entries) - TIMELINE_ENTRIES_SHOWN
        if hidden > 0:
            parts.append(Text(f"  ... {hidden} earlier event(s)", style="dim"))
        for entry in entries[-TIMELINE_ENTRIES_SHOWN:]:
            step = f"step {entry.step}: " if entry.step is not None else ""
            parts.append(Text(f"  {entry.kind}: {step}{entry.message.splitlines()[0] if entry.message else ''}"))
    for note in run.notes:
        parts.append(Text.from_markup(f"[yellow]note:[/] {escape(note)}"))
    return Panel(Group(*parts), title=f"[bold]{escape(run.label)}[/] [dim]{escape(str(run.path))}[/]",
                 title_align="left")


def _metrics_table(run: RunData, trend_width: int, *, wide: bool) -> Table | Text:
    keys = metric_keys([*run.train, *run.validation])
    if not keys:
        return Text("no metrics logged yet", style="dim")
    table = Table(box=None, padding=(0, 1), show_edge=False)
    table.add_column("metric", no_wrap=True, max_width=22, overflow="ellipsis")
    table.add_column("split", no_wrap=True, min_width=5)
    table.add_column("trend", no_wrap=True, min_width=trend_width)
    numbers = ("first", "last", "min", "max") if wide else ("last", "min", "max")
    for name in numbers:
        table.add_column(name, justify="right", no_wrap=True, min_width=10)
    for _, group_keys in grouped_keys(keys):
        for key in group_keys:
            for split, rows in (("train", run.train), ("validation", run.validation)):
                line = series(rows, key, split)
                if not line.steps:
                    continue
                finite = line.finite_values()
                values = {"first": line.values[0], "last": line.values[-1], "min": min(finite, default=None),
                          "max": max(finite, default=None)}
                table.add_row(escape(key), "val" if split == "validation" else split,
                              sparkline(line.values, trend_width), *[_fmt(values[name]) for name in numbers])
    return table


def _fmt(value: float | None) -> str:
    return "nan/inf" if value is None else format_value(value)


def _config_diff_table(runs: list[RunData]) -> Table | Text:
    differences = config_diff([run.config for run in runs])
    if not differences:
        return Text("The runs' resolved configs are identical.")
    table = Table(title="config differences", title_justify="left")
    table.add_column("key", style="cyan", no_wrap=True)
    for run in runs:
        table.add_column(escape(run.label))
    for key, values in differences:
        table.add_row(escape(key), *[escape("(not set)" if value is MISSING else str(value)) for value in values])
    return table
