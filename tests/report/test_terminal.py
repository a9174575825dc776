"""The terminal summary (no -o): sparklines and a compact table per run, rendered to a string console."""

from __future__ import annotations

import io

from rich.console import Console

from rlhfctl.report.run_data import load_runs
from rlhfctl.report.terminal import sparkline, print_summary


def render(runs, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    print_summary(runs, console)
    return console.file.getvalue()


def test_sparkline_golden_values() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([7, 6, 5, 4, 3, 2, 1, 0], width=4) == "█▆▃▁"  # bucket means 6.5, 4.5, 2.5, 0.5
    assert sparkline([2.0, 2.0, 2.0]) == "▄▄▄"
    assert sparkline([0.05, 0.05 + 1e-17, 0.05]) == "▄▄▄"  # constant up to rounding
    assert sparkline([1.0, None, 3.0]) == "▁ █"
    assert sparkline([None, None]) == "  "
    assert sparkline([]) == ""
    assert len(sparkline(list(range(1000)), width=24)) == 24


def test_summary_shows_status_metrics_timeline_alarms_and_notes(make_run) -> None:
    folder = make_run("hot", kl_scale=2.0, finished=False)
    with open(folder / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 31, "split": "tr')
    text = render(load_runs([folder]))
    assert "stage ppo · running or interrupted · step 30 of 30" in text
    assert "2 checkpoint(s)" not in text and "3 checkpoint(s) (latest 30)" in text
    train_rows = {line.split()[1]: line.split() for line in text.splitlines()
                  if line.startswith("│  ") and line.split()[2:3] == ["train"]}
    assert train_rows["kl_k1"][-5:-1] == ["2", "60", "2", "60"]  # first, last, min, max in full
    assert "kl_ceiling at step 13 (found by the report): KL from the reference policy (kl_k1) is 26" in text
    assert "last record: step 30: last logged step 30" in text
    assert "note: metrics.jsonl line 34 is incomplete" in text


def test_summary_fits_80_columns_and_compares_configs(make_run) -> None:
    runs = load_runs([make_run("slow", learning_rate=1e-4), make_run("fast", learning_rate=3e-4)])
    text = render(runs, width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "│  score_mean" in text and "0.2500" not in text and "…" not in text.split("config differences")[0]
    assert "config differences" in text and "training.learning_rate" in text and "0.0003" in text
