"""Reading run folders: what is a run, partial and broken files, status of live/interrupted/failed runs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from rlhfctl.errors import UserError
from rlhfctl.report.run_data import load_run, load_runs, step_gaps_note

from .conftest import T0, write_jsonl


def test_a_synthetic_run_loads_with_its_splits_samples_events_and_checkpoints(make_run) -> None:
    run = load_run(make_run("ppo"))
    assert run.stage == "ppo" and run.label == "ppo"
    assert len(run.train) == 30 and [row["step"] for row in run.validation] == [10, 20, 30]
    assert run.train[0]["time"] == T0 + 0.5 and run.train[0]["kl_k1"] == pytest.approx(0.1)
    assert len(run.samples) == 18 and [c.step for c in run.checkpoints] == [10, 20, 30]
    assert run.total_steps == 30 and run.samples_per_step == 16 and run.last_step == 30
    assert run.config["generation"]["max_new_tokens"] == 32
    assert run.status() == "finished" and run.notes == []


def test_a_folder_that_is_not_a_run_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        load_run(tmp_path)
    assert (f"{tmp_path} is not an rlhfctl run folder: it has none of metrics.jsonl, events.jsonl, "
            "resolved_config.toml, samples.jsonl") in error.value.message
    with pytest.raises(UserError, match="no such folder"):
        load_run(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="is a file, not a run folder"):
        load_run(tmp_path / "file.txt")


def test_a_parent_of_runs_or_a_folder_inside_a_run_gets_a_hint(make_run, tmp_path: Path) -> None:
    run = make_run("runs/ppo")
    with pytest.raises(UserError) as error:
        load_run(tmp_path / "runs")
    assert error.value.hint == f"Runs inside it: {run}"
    with pytest.raises(UserError) as error:
        load_run(run / "ppo_run")
    assert error.value.hint == f"Did you mean its parent folder {run}?"


def test_every_bad_folder_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(UserError) as error:
        load_runs([tmp_path / "a", tmp_path / "b"])
    assert "a is not an rlhfctl run folder" in error.value.message and "b: no such folder" in error.value.message


def test_a_truncated_last_line_is_skipped_and_noted(make_run) -> None:
    folder = make_run("cut")
    text = (folder / "metrics.jsonl").read_text()
    lines = text.splitlines()
    (folder / "metrics.jsonl").write_text(text + lines[-1][:25])  # a crash in the middle of a line
    run = load_run(folder)
    assert len(run.train) == 30
    assert run.notes == [f"metrics.jsonl line {len(lines) + 1} is incomplete (the run was cut off while writing "
                         "it, or is writing it now): skipped"]


def test_broken_lines_in_the_middle_and_bad_records_are_noted_with_line_numbers(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text(
        '{"step": 1, "split": "train", "loss": 1.0, "note": "text", "flag": true}\n'
        'not json\n'
        '[1, 2]\n'
        '{"step": "two", "split": "train", "loss": 0.5}\n'
        '{"step": 3, "split": "train", "loss": null}\n')
    run = load_run(folder)
    assert run.train == [{"step": 1, "split": "train", "loss": 1.0}, {"step": 3, "split": "train", "loss": None}]
    assert "metrics.jsonl: 2 line(s) are not JSON objects and were skipped (line 2, 3)" in run.notes
    assert any(note.startswith("metrics.jsonl line 4: expected an integer \"step\"") for note in run.notes)
    assert "resolved_config.toml is missing: the config is not shown" in run.notes


def test_event_times_that_are_not_finite_numbers_are_dropped(make_run) -> None:
    folder = make_run("odd")
    with open(folder / "events.jsonl", "a") as events:
        events.write('{"time": NaN, "kind": "notice", "message": "m"}\n{"time": "soon", "kind": "notice"}\n')
    assert [event["time"] for event in load_run(folder).events[-2:]] == [None, None]


def test_an_empty_run_is_still_a_run(tmp_path: Path) -> None:
    folder = tmp_path / "fresh"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("")
    (folder / "resolved_config.toml").write_text('stage = "sft"\n')
    run = load_run(folder)
    assert run.train == [] and run.stage == "sft"
    assert "metrics.jsonl has no metric lines yet" in run.notes
    (folder / "metrics.jsonl").unlink()
    assert "metrics.jsonl is missing: no step was logged yet" in load_run(folder).notes


def test_status_of_finished_failed_live_and_interrupted_runs(make_run) -> None:
    assert load_run(make_run("done")).status() == "finished"
    live = make_run("live", finished=False)
    assert load_run(live).status() == "running or interrupted"
    old = time.time() - 3600
    for name in ("metrics.jsonl", "events.jsonl", "samples.jsonl", "resolved_config.toml"):
        os.utime(live / name, (old, old))
    assert load_run(live).status() == "interrupted"
    failed = make_run("failed", finished=False)
    with open(failed / "events.jsonl", "a") as events:
        events.write(json.dumps({"time": T0 + 20, "kind": "failure", "step": 12,
                                 "message": "ppo training failed: worker rank 1: OOM\nThe latest ..."}) + "\n")
    assert load_run(failed).status() == "failed: ppo training failed: worker rank 1: OOM"
    with open(failed / "events.jsonl", "a") as events:  # resumed afterwards: running again
        events.write(json.dumps({"time": T0 + 99, "kind": "start", "start_step": 10}) + "\n")
    assert load_run(failed).status() == "running or interrupted"


def test_without_events_a_run_whose_model_was_exported_is_finished(make_run) -> None:
    folder = make_run("old", events=False)
    assert load_run(folder).status() == "running or interrupted"
    (Path(f"{folder}-model")).mkdir()
    (Path(f"{folder}-model") / "config.json").write_text("{}")
    assert load_run(folder).status() == "finished"


def test_runs_with_the_same_folder_name_get_distinct_labels(make_run) -> None:
    runs = load_runs([make_run("a/ppo"), make_run("b/ppo"), make_run("c/rm", stage="rm")])
    assert [run.label for run in runs] == ["a/ppo", "b/ppo", "rm"]
    same = make_run("x")
    twice = load_runs([same, same])
    assert twice[0].label.endswith("/x") and twice[1].label == f"{twice[0].label} #2"


def test_gaps_in_the_train_steps_are_noted(tmp_path: Path) -> None:
    assert step_gaps_note(list(range(1, 50))) == []
    assert step_gaps_note([10, 20, 30, 40, 90, 100]) == [
        "1 gap(s) in the logged train steps (usually every 10): 40 -> 90"]
    folder = tmp_path / "gappy"
    folder.mkdir()
    write_jsonl(folder / "metrics.jsonl", [{"step": step, "split": "train", "loss": 1.0}
                                           for step in [*range(1, 11), *range(30, 41)]])
    assert "1 gap(s) in the logged train steps (usually every 1): 10 -> 30" in load_run(folder).notes
