"""``rlhfctl report --png DIR``: the report's main charts as PNG images, drawn with matplotlib's Agg canvas.

Agg renders in-process (no browser, no display, nothing fetched), so it works offline on a plain server; the
HTML page's plotly would need a headless Chrome (kaleido) for static images. One image per metric panel
(``loss.png``, ``kl.png``, ...; one subplot per metric), plus ``frontier.png`` and ``timeline.png``. The
charts are the same :class:`rlhfctl.report.charts.Chart` objects the HTML page draws.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

from rlhfctl.errors import UserError
from rlhfctl.fileio import atomic_open
from rlhfctl.report.charts import Chart, Trace, color, frontier_chart, metric_charts, timeline_chart
from rlhfctl.report.run_data import RunData
from rlhfctl.report.series import GROUP_TITLES
from rlhfctl.report.timeline import run_alarms, timeline

COLUMNS = 3
MARKERS = {"triangle-up": "^", "triangle-right": ">", "circle": "o", "square": "s", "diamond": "D", "x": "X",
           "star": "*", "hourglass": "v"}


def planned_images(runs: list[RunData]) -> list[tuple[str, str, list[Chart]]]:
    """``[(file name, image title, charts)]`` for ``runs``."""
    images = [(f"{group}.png", GROUP_TITLES[group], charts) for group, charts in metric_charts(runs)]
    frontier = frontier_chart(runs)
    if frontier is not None:
        images.append(("frontier.png", frontier.title, [frontier]))
    progress = timeline_chart(runs, [timeline(run, run_alarms(run)) for run in runs])
    if progress is not None:
        images.append(("timeline.png", progress.title, [progress]))
    return images


def plan_pngs(runs: list[RunData], folder: Path, *, force: bool) -> list[tuple[str, str, list[Chart]]]:
    """The images to write into ``folder``; a UserError when that would replace images without ``force``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--png {folder} is a file, not a folder")
    images = planned_images(runs)
    existing = [name for name, _, _ in images if (folder / name).exists()]
    if existing and not force:
        raise UserError(f"--png {folder} already holds {', '.join(existing)}", hint="Pass --force to replace them.")
    return images


def write_pngs(images: list[tuple[str, str, list[Chart]]], folder: Path) -> list[Path]:
    """Write the images of :func:`plan_pngs` into ``folder`` (created), each atomically."""
    return [_write_image(Path(folder) / name, title, charts) for name, title, charts in images]


def _write_image(target: Path, title: str, charts: list[Chart]) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(COLUMNS, len(charts))
    rows = math.ceil(len(charts) / columns)
    wide = len(charts) == 1
    height = 5 if wide else 3.4 * rows + 0.5
    figure = Figure(figsize=(12 if wide else 5.2 * columns, height), dpi=100)
    FigureCanvasAgg(figure)
    # fixed margins: a layout engine would draw every image twice (measured: half the time of --png)
    figure.subplots_adjust(left=0.08 if wide else 0.09, right=0.98, bottom=0.7 / height,
                           top=1 - (0.45 if wide else 0.85) / height, wspace=0.32, hspace=0.6)
    if not wide:  # one chart: its own title says it
        figure.suptitle(title, fontsize=13)
    for index, chart in enumerate(charts):
        axes = figure.add_subplot(rows, columns, index + 1)
        _draw(axes, chart)
    with atomic_open(target, "wb", encoding=None) as handle:
        figure.savefig(handle, format="png")
    return target


def _draw(axes, chart: Chart) -> None:
    for trace in chart.traces:
        _draw_trace(axes, trace, chart.x_is_time)
    axes.set_title(chart.title if len(chart.title) <= 60 else chart.title[:57] + "...", fontsize=10)
    axes.set_xlabel(chart.x_title, fontsize=8)
    axes.set_ylabel(chart.y_title if len(chart.y_title) <= 30 else "", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(True, alpha=0.3)
    if len(chart.traces) > 1:
        axes.legend(fontsize=7)
    if chart.x_is_time:
        for label in axes.get_xticklabels():
            label.set_rotation(20)


def _draw_trace(axes, trace: Trace, x_is_time: bool) -> None:
    x = [dt.datetime.fromtimestamp(value) for value in trace.x] if x_is_time else trace.x
    y = [math.nan if value is None else value for value in trace.y]
    run_color = color(trace.run_index)
    if trace.style == "train":
        axes.plot(x, y, color=run_color, linewidth=1.3, label=trace.name)
    elif trace.style == "validation":
        axes.plot(x, y, color=run_color, linewidth=1.3, linestyle="--", marker="D", markersize=4, label=trace.name)
    elif trace.style == "points":
        axes.scatter(x, y, color=run_color, s=12, alpha=0.55, label=trace.name)
    elif trace.style == "validation points":
        axes.scatter(x, y, color=run_color, s=40, marker="D", edgecolors="black", label=trace.name)
    elif trace.style == "front":
        axes.step(x, y, where="post", color=run_color, linewidth=2, label=trace.name)
    else:
        axes.scatter(x, y, color=run_color, s=60, marker=MARKERS.get(trace.symbol or "", "o"), edgecolors="black",
                     zorder=3, label=trace.name)
