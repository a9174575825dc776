"""Smoke tests of the benchmark harness's pure helpers (no timing assertions: benchmarks are not tests)."""

from __future__ import annotations

import json
import math
import struct
import sys
import time
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

from benchlib import stats, workspace  # noqa: E402
from benchlib.metrics_watch import MetricsWatcher  # noqa: E402
from benchlib.procmon import run_measured  # noqa: E402


def test_median_ignores_missing_values_and_handles_even_counts():
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert stats.median([None, 5.0, math.nan]) == 5.0
    assert stats.median([]) is None
    assert stats.median([None]) is None


def test_ratio_is_undefined_without_both_sides_or_with_zero_denominator():
    assert stats.ratio(3.0, 2.0) == 1.5
    assert stats.ratio(None, 2.0) is None
    assert stats.ratio(3.0, None) is None
    assert stats.ratio(3.0, 0.0) is None
    assert stats.Row("s", "f", "u", rlhfctl=300.0, trl=150.0).ratio == 2.0


def test_steady_state_rate_drops_warmup_steps():
    # Steps end at 1..6 s with 8 items each; warm-up = 2 steps, so 4 steps x 8 items over 6 - 2 = 4 s.
    assert stats.steady_state_rate([1, 2, 3, 4, 5, 6], [8] * 6) == pytest.approx(8.0)
    # A slow first step does not count: 10 s warm-up step, then 1 s per step.
    assert stats.steady_state_rate([10, 11, 12, 13, 14], [8] * 5) == pytest.approx(24 / 3)
    assert stats.steady_state_rate([1, 2, 3], [8] * 3) is None  # only one step after warm-up
    with pytest.raises(ValueError):
        stats.steady_state_rate([1, 2], [8])


def test_flops_and_mfu_follow_6nd_and_2nd():
    assert stats.training_flops(10, 3) == 180.0
    assert stats.forward_flops(10, 3) == 60.0
    assert stats.mfu(50e9, 100e9) == 0.5
    assert stats.mfu(None, 100e9) is None


def test_markdown_table_shows_values_ratio_and_missing_figures():
    rows = [
        stats.Row("RM tiny", "steady-state pairs/s", "pairs/s", 300.0, 150.0, "batch 8"),
        stats.Row("RM tiny", "MFU", "%", 0.456, None, "a|b"),
    ]
    table = stats.markdown_table(rows).splitlines()
    assert table[0] == "| section | figure | unit | rlhfctl | TRL | rlhfctl/TRL | note |"
    assert table[2] == "| RM tiny | steady-state pairs/s | pairs/s | 300 | 150 | 2.00x | batch 8 |"
    assert table[3] == "| RM tiny | MFU | % | 45.6 % | n/a | n/a | a/b |"
    assert stats.format_value(1234.5) == "1,234"
    assert stats.format_value(0.01234) == "0.0123"
    assert rows[0].to_json()["ratio_rlhfctl_over_trl"] == 2.0


def test_pss_sampler_counts_children_and_marked_orphans():
    """A child allocating ~60 MB and an orphaned grandchild (re-parented away) are both counted."""
    grandchild = "b = b'x' * 60_000_000; import time; time.sleep(1.5)"
    child = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}], start_new_session=True)\n"  # orphaned at once
    )
    parent = (
        "import subprocess, sys, time\n"
        f"subprocess.run([sys.executable, '-c', {child!r}])\n"
        "time.sleep(1.6)\n"
    )
    measured = run_measured([sys.executable, "-c", parent], timeout_s=60, sample_interval_s=0.1)
    assert measured.ok, measured.output_tail
    assert measured.peak_pss_bytes > 50_000_000
    assert measured.peak_processes >= 2
    assert measured.wall_time_s >= 1.6


def test_count_parameters_reads_the_safetensors_header(tmp_path):
    header = {
        "__metadata__": {"format": "pt"},
        "transformer.wte.weight": {"dtype": "F32", "shape": [10, 4], "data_offsets": [0, 160]},
        "transformer.wpe.weight": {"dtype": "F32", "shape": [8, 4], "data_offsets": [160, 288]},
        "transformer.h.0.mlp.c_fc.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [288, 352]},
    }
    encoded = json.dumps(header).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(352))
    count = workspace.count_parameters(tmp_path)
    assert (count.total, count.token_embedding, count.position_embedding) == (88, 40, 32)
    assert count.causal_lm_flop_params == 56
    assert count.scalar_head_flop_params == 16


def test_metrics_watcher_stamps_records_and_survives_a_rewrite(tmp_path):
    path = tmp_path / "metrics.jsonl"
    watcher = MetricsWatcher(path)
    watcher.poll()  # no file yet: nothing happens
    path.write_text('{"step": 1, "epoch": 0, "split": "train", "loss": 1.0}\n{"step": 2, "epo', encoding="utf-8")
    watcher.poll()
    first = watcher.records("train")
    assert [rec.step for rec in first] == [1]
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('ch": 0, "split": "train"}\n{"step": 2, "epoch": 0, "split": "validation", "time": 5.0}\n')
    time.sleep(0.01)
    watcher.poll()
    assert [rec.step for rec in watcher.records("train")] == [1, 2]
    assert watcher.records("validation")[0].time == 5.0  # a record's own time wins over the arrival time
    path.write_text('{"step": 1, "epoch": 0, "split": "train", "loss": 1.0}\n', encoding="utf-8")  # rewritten
    watcher.poll()
    assert watcher.records("train")[0].seen_at == first[0].seen_at


def test_generated_rm_data_is_deterministic_and_learnable():
    rows = workspace.rm_rows(50, seed=3)
    assert rows == workspace.rm_rows(50, seed=3)
    assert all(set(row) == {"instruction", "chosen", "rejected"} for row in rows)
    assert all(row["chosen"] != row["rejected"] and row["chosen"].startswith(" ") for row in rows)
    assert [row["prompt"] for row in workspace.ppo_rows(5, 3)] == [row["instruction"] for row in rows[:5]]


def test_rlhfctl_phase_split_skips_the_first_update_and_counts_forwards_as_scoring():
    from benchlib.tools import _rlhfctl_phase_seconds

    records = [
        {"step": 1, "time_generate_s": 9.0, "time_score_s": 9.0, "time_forward_s": 9.0, "time_train_s": 9.0},
        {"step": 2, "time_generate_s": 1.0, "time_score_s": 0.25, "time_forward_s": 0.5, "time_train_s": 2.0},
        {"step": 3, "time_generate_s": 3.0, "time_score_s": 0.25, "time_forward_s": 0.5, "time_train_s": 4.0,
         "episodes_per_s": 5.0},
    ]
    assert _rlhfctl_phase_seconds(records) == {"generate": 2.0, "score": 0.75, "train": 3.0}


def test_parse_last_json_line_takes_the_figures_a_script_prints_last():
    from benchlib.sections.cli import parse_last_json_line

    assert parse_last_json_line('warming up\n{"rows_per_s": 10}\n[1, 2]\n{"rows_per_s": 52000}\n') == {
        "rows_per_s": 52000}
    assert parse_last_json_line("no json here") is None


def test_rate_from_step_metrics_uses_the_runs_own_per_step_rate():
    from benchlib.tools import rate_from_step_metrics

    # 8 items per step at 2, 4, 4, 4, 4 items/s: steps take 4, 2, 2, 2, 2 s; warm-up = 2 steps -> 24 items / 6 s.
    records = [{"step": i + 1, "episodes_per_s": rate} for i, rate in enumerate([2.0, 4.0, 4.0, 4.0, 4.0])]
    assert rate_from_step_metrics(records, 8) == pytest.approx(4.0)
    assert rate_from_step_metrics([{"step": 1, "loss": 1.0}], 8) is None


def test_rate_without_stalls_leaves_out_a_pause_of_the_machine_only():
    # warm-up 2 steps; then 1 s steps and one 10 s stall: the span rate halves, the stall-free one does not
    ends = [1, 2, 3, 4, 5, 15, 16, 17, 18, 19]
    assert stats.steady_state_rate(ends, [8] * 10) == pytest.approx(64 / 17)
    assert stats.rate_without_stalls(ends, [8] * 10) == (pytest.approx(8.0), 1)
    # a tool's own periodic cost below 3x its median step stays counted
    ends = [1, 2, 3, 4, 6.5, 7.5, 8.5, 9.5, 12, 13]
    assert stats.rate_without_stalls(ends, [8] * 10) == (pytest.approx(64 / 11), 0)
    assert stats.rate_without_stalls([1, 2, 3], [8] * 3) == (None, 0)
