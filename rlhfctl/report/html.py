"""The self-contained HTML report: plotly.js inlined (opens offline, nothing fetched), one page for one or more runs.

Sections: summary per run, health alarms, the metric panels (one interactive chart per metric, train and
validation of every run overlaid), the reward-vs-KL frontier, the timeline, PPO/GRPO samples across training and
the resolved configs (with a diff when several runs are compared). plotly is imported here, only when a page is
built (``rlhfctl --help`` stays fast).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from typing import Any

from rlhfctl import __version__
from rlhfctl.report.charts import Chart, Trace, color, frontier_chart, metric_charts, timeline_chart
from rlhfctl.report.run_data import RunData
from rlhfctl.report.sections import alarms_html, config_html, samples_html, summary_cards, timeline_table
from rlhfctl.report.series import GROUP_TITLES
from rlhfctl.report.timeline import run_alarms, timeline

PLOT_CONFIG = {"responsive": True, "displaylogo": False}


def plotly_js() -> str:
    """plotly.js as shipped inside the ``plotly`` package (the same bundle ``plotly.io.to_html`` inlines)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def render_html(runs: list[RunData], *, generated_at: float | None = None) -> str:
    """The whole page as one string (plotly.js included)."""
    generated_at = dt.datetime.now().timestamp() if generated_at is None else generated_at
    alarms = [run_alarms(run) for run in runs]
    timelines = [timeline(run, found) for run, found in zip(runs, alarms)]
    figures: dict[str, dict[str, Any]] = {}
    sections = [("summary", "Summary", summary_cards(runs, alarms)), ("health", "Health", alarms_html(runs, alarms))]
    metric_groups = metric_charts(runs)
    metrics = [f"<h3 id=group-{group}>{_esc(GROUP_TITLES[group])}</h3>{_chart_grid(charts, figures)}"
               for group, charts in metric_groups]
    sections.append(("metrics", "Metrics", "".join(metrics) or "<p class=empty>No metrics were logged yet.</p>"))
    frontier = frontier_chart(runs)
    if frontier is not None:
        sections.append(("frontier", "Reward vs KL", _chart_grid([frontier], figures, wide=True)))
    progress = timeline_chart(runs, timelines)
    sections.append(("timeline", "Timeline", (_chart_grid([progress], figures, wide=True) if progress else "")
                     + timeline_table(runs, timelines)))
    if any(run.samples for run in runs):
        sections.append(("samples", "Samples across training", samples_html(runs)))
    sections.append(("config", "Resolved config", config_html(runs)))
    nav = " · ".join(f"<a href='#{anchor}'>{_esc(title)}</a>" for anchor, title, _ in sections)
    body = "".join(f"<section id={anchor}><h2>{_esc(title)}</h2>{content}</section>"
                   for anchor, title, content in sections)
    header = (f"<h1>rlhfctl report</h1><p class=meta>{len(runs)} run(s) · generated "
              f"{_esc(_local_time(generated_at))} by rlhfctl {_esc(__version__)} · times are local to this "
              f"machine</p><nav>{nav}</nav>")
    return _page(header + body, figures)


def _chart_grid(charts: list[Chart], figures: dict[str, dict[str, Any]], *, wide: bool = False) -> str:
    cells = []
    for chart in charts:
        figures[chart.id] = plotly_figure(chart)
        note = f"<p class=note>{_esc(chart.note)}</p>" if chart.note else ""
        cells.append(f"<div class=cell><div class=plot id='{chart.id}'></div>{note}</div>")
    return f"<div class='grid{' wide' if wide else ''}'>" + "".join(cells) + "</div>"


# ---------------------------------------------------------------------------------------------- plotly figures


def plotly_figure(chart: Chart) -> dict[str, Any]:
    """A plotly figure (``{"data", "layout"}``) for ``chart``; validated against plotly's schema in the tests."""
    layout = {
        "title": {"text": _esc(chart.title), "font": {"size": 14}, "x": 0.02},
        "height": 400 if chart.group in ("frontier", "timeline") else 330,
        "margin": {"l": 60, "r": 15, "t": 40, "b": 40},
        "xaxis": {"title": {"text": _esc(chart.x_title)}, "type": "date" if chart.x_is_time else "linear",
                  "automargin": True},
        "yaxis": {"title": {"text": _esc(chart.y_title)}, "automargin": True},
        "hovermode": "closest",
        "showlegend": True,
        "legend": {"orientation": "h", "y": -0.3, "yanchor": "top", "font": {"size": 11}},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#f7f7f9",
    }
    return {"data": [_plotly_trace(trace, chart.x_is_time) for trace in chart.traces], "layout": layout}


def _plotly_trace(trace: Trace, x_is_time: bool) -> dict[str, Any]:
    x = [_local_time(value) for value in trace.x] if x_is_time else list(trace.x)
    shown: dict[str, Any] = {"type": "scatter", "name": _esc(trace.name), "x": x, "y": _finite(trace.y)}
    run_color = color(trace.run_index)
    if trace.style == "train":
        shown |= {"mode": "lines", "line": {"color": run_color, "width": 1.6}}
    elif trace.style == "validation":
        shown |= {"mode": "lines+markers", "line": {"color": run_color, "width": 1.6, "dash": "dash"},
                  "marker": {"color": run_color, "size": 7, "symbol": "diamond"}}
    elif trace.style == "points":
        shown |= {"mode": "markers", "marker": {"color": run_color, "size": 6, "opacity": 0.55}}
    elif trace.style == "validation points":
        shown |= {"mode": "markers", "marker": {"color": run_color, "size": 10, "symbol": "diamond",
                                                "line": {"color": "#000000", "width": 1}}}
    elif trace.style == "front":
        shown |= {"mode": "lines", "line": {"color": run_color, "width": 2, "shape": "hv"}}
    else:  # event markers
        shown |= {"mode": "markers", "marker": {"color": run_color, "size": 12, "symbol": trace.symbol or "circle",
                                                "line": {"color": "#000000", "width": 1}}}
    if trace.hover is not None:
        shown |= {"hovertext": [_esc(text[:300]) for text in trace.hover], "hoverinfo": "text+x+y"}
    return shown


def _finite(values: list[float | None]) -> list[float | None]:
    return [value if value is not None and math.isfinite(value) else None for value in values]


def _local_time(unix_seconds: float) -> str:
    return dt.datetime.fromtimestamp(unix_seconds).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


# ---------------------------------------------------------------------------------------------- page


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no "</script>" or "<!--" can end it early)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1500px;
padding:0 24px 48px;color:#1d1d1f;background:#fff}
h1{margin:20px 0 4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}h3{margin:18px 0 6px}
.meta,.note,.empty{color:#666;font-size:13px}nav{margin:8px 0 16px;font-size:14px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:12px}
.grid.wide{grid-template-columns:1fr}.cell{border:1px solid #e3e3e8;border-radius:6px;padding:4px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:12px}
.card{border:1px solid #e3e3e8;border-radius:6px;padding:10px 14px}.card h3{margin:0 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border:1px solid #e3e3e8;padding:4px 8px;
vertical-align:top;text-align:left}th{background:#f3f3f6}td.text{white-space:pre-wrap;max-width:520px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.status-finished{color:#1a7f37}.status-failed{color:#c62828}.status-running{color:#b26a00}
.sev-error{color:#c62828;font-weight:600}.sev-warn{color:#b26a00}.notes li{color:#b26a00}
pre{background:#f7f7f9;padding:10px;overflow:auto;font-size:12px}details{margin:6px 0}
"""

SCRIPT = """
const figures = JSON.parse(document.getElementById("figures").textContent);
const options = %s;
const drawn = Object.entries(figures).map(([id, figure]) =>
  Plotly.newPlot(id, figure.data, figure.layout, options));
Promise.all(drawn).then(() => { document.body.dataset.plotsRendered = String(drawn.length); })
  .catch((error) => { console.error("plot failed: " + error); });
"""


def _page(body: str, figures: dict[str, dict[str, Any]]) -> str:
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>rlhfctl report</title><style>{STYLE}</style>"
        f"<script>{plotly_js()}</script></head><body data-plots-expected='{len(figures)}'>"
        f"{body}"
        f"<script type='application/json' id=figures>{_script_json(figures)}</script>"
        f"<script>{SCRIPT % _script_json(PLOT_CONFIG)}</script></body></html>"
    )

