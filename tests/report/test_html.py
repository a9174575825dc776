"""The HTML page: self-contained, every section present, figures valid for plotly, text escaped."""

from __future__ import annotations

import json
import re

import plotly.graph_objects as go
import pytest

from rlhfctl.report.charts import frontier_chart, metric_charts, timeline_chart
from rlhfctl.report.html import plotly_figure, render_html
from rlhfctl.report.run_data import load_run, load_runs
from rlhfctl.report.timeline import timeline

from .conftest import write_jsonl


def figures_of(page: str) -> dict:
    match = re.search(r"<script type='application/json' id=figures>(.*?)</script>", page, re.S)
    assert match, "the page has no figures element"
    return json.loads(match.group(1))


def test_page_is_self_contained_and_has_every_section(make_run) -> None:
    page = render_html(load_runs([make_run("ppo")]), generated_at=1_800_000_000.0)
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>")
    assert not re.search(r"""<(script|link|img|iframe)[^>]+(src|href)\s*=""", page)  # nothing fetched
    assert "Plotly.newPlot" in page and len(page) > 3_000_000  # plotly.js itself is inlined
    for section in ("summary", "health", "metrics", "frontier", "timeline", "samples", "config"):
        assert f"<section id={section}>" in page
    figures = figures_of(page)
    assert f"data-plots-expected='{len(figures)}'" in page
    assert {"chart-frontier", "chart-timeline"} <= set(figures)
    titles = {figure["layout"]["title"]["text"] for figure in figures.values()}
    assert {"score_mean", "kl_k1", "entropy", "response_length_mean", "learning_rate", "value_loss",
            "explained_variance", "steps_per_s (from log times)", "samples_per_s (from log times)"} <= titles


def test_every_figure_passes_plotlys_own_validation(make_run) -> None:
    runs = load_runs([make_run("a"), make_run("b", learning_rate=3e-4, kl_scale=0.3), make_run("rm", stage="rm")])
    charts = [chart for _, group in metric_charts(runs) for chart in group]
    charts.append(frontier_chart(runs))
    charts.append(timeline_chart(runs, [timeline(run) for run in runs]))
    for chart in charts:
        go.Figure(plotly_figure(chart))  # raises ValueError on any property plotly does not know


def test_several_runs_are_overlaid_and_their_configs_compared(make_run) -> None:
    page = render_html(load_runs([make_run("slow", learning_rate=1e-4), make_run("fast", learning_rate=3e-4)]))
    score = next(figure for figure in figures_of(page).values() if figure["layout"]["title"]["text"] == "score_mean")
    assert [trace["name"] for trace in score["data"]] == ["slow · train", "slow · validation", "fast · train",
                                                          "fast · validation"]
    assert len({trace["line"]["color"] for trace in score["data"]}) == 2  # one colour per run
    assert "<h3>What differs</h3>" in page
    assert re.search(r"<td>training\.learning_rate</td><td class=text>0\.0001</td><td class=text>0\.0003</td>", page)


def test_sample_text_and_labels_are_escaped(make_run) -> None:
    folder = make_run("ppo")
    write_jsonl(folder / "samples.jsonl", [{"step": 5, "prompt": "</script><script>alert(1)</script>",
                                            "response": "<b>bold</b> & co", "score": 1.5, "kl": 0.25}])
    page = render_html(load_runs([folder]))
    assert "<script>alert(1)" not in page and "&lt;/script&gt;&lt;script&gt;alert(1)" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page
    header = re.search(r"<summary>step 5 \(1 samples\)</summary><table><tr>(.*?)</tr>", page).group(1)
    assert header == "<th>prompt</th><th>response</th><th>score</th><th>kl</th>"


def test_long_sample_histories_show_a_spread_of_steps(make_run) -> None:
    folder = make_run("ppo", steps=200, samples_every=2)
    page = render_html(load_runs([folder]))
    assert "showing 12 of 100 sampled steps" in page
    shown = [int(step) for step in re.findall(r"<summary>step (\d+) \(", page)]
    assert shown[0] == 2 and shown[-1] == 200 and len(shown) == 12


def test_a_run_with_no_metrics_yet_still_renders(tmp_path) -> None:
    folder = tmp_path / "fresh"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 0.5')  # first line half-written
    page = render_html([load_run(folder)])
    assert "No metrics were logged yet." in page
    assert "href='#frontier'" not in page and "href='#samples'" not in page  # no links to absent sections
    assert "metrics.jsonl line 1 is incomplete" in page
    assert figures_of(page) == {}


@pytest.mark.parametrize("stage", ["rm", "ppo"])
def test_nan_values_become_gaps_not_invalid_json(make_run, stage: str) -> None:
    folder = make_run(stage, stage=stage)
    write_jsonl(folder / "metrics.jsonl", [{"step": 1, "split": "train", "loss": 1.0},
                                           {"step": 2, "split": "train", "loss": None},
                                           {"step": 3, "split": "train", "loss": 0.5}])
    loss = next(f for f in figures_of(render_html(load_runs([folder]))).values()
                if f["layout"]["title"]["text"] == "loss")
    assert loss["data"][0]["y"] == [1.0, None, 0.5]
