"""Smoke tests of the memory benchmark's pure parts: every case writes a valid config, the table, the sampler."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import bench_memory  # noqa: E402
from benchlib.process_peaks import ProcessPeaks, run_with_process_peaks  # noqa: E402


@pytest.mark.parametrize("case", [case for case in bench_memory.CASES if bench_memory.supported(case) is None],
                         ids=lambda case: case.label)
def test_every_runnable_case_writes_a_valid_config(case, tmp_path):
    from rlhfctl.config.loader import load_config
    from rlhfctl.config.schema import CONFIG_CLASSES

    models = {"tiny": tmp_path / "tiny", "llama60m": tmp_path / "llama", "llama120m": tmp_path / "llama120",
              "llama134m": tmp_path / "llama134", "llama60m-rm": tmp_path / "llama-rm",
              "llama134m-rm": tmp_path / "llama134-rm"}
    data = {name: tmp_path / f"{name}.jsonl" for name in ("sft", "sft_validation", "rm", "rm_validation", "ppo",
                                                          "ppo_validation", "ppo_one_iteration",
                                                          "ppo_three_iterations")}
    config = case.config(models, data, tmp_path / "run")
    path = bench_memory.write_toml(tmp_path / "case.toml", config)
    loaded = load_config(path, check_files=False)
    assert isinstance(loaded, CONFIG_CLASSES[case.stage])
    assert loaded.training.num_training_workers == case.workers
    assert case.models <= set(models)
    if case.stage == "ppo":  # a real run's reward model is a file of its own; the older cases share the policy's
        separate = loaded.general.rm_name != loaded.general.model_name
        assert separate == case.separate_reward_model
        assert not separate or loaded.general.rm_name == str(models[f"{case.model}-rm"])


def test_the_results_table_reports_ratios_and_errors():
    rows = [{"case": "a", "stage": "sft", "model": "tiny", "workers": 1, "estimate_bytes": 2 * 1024**3,
             "measured_bytes": 1024**3, "ratio": 2.0, "peak_phase": "train step", "wall_time_s": 3.0,
             "tree_peak_bytes": 3 * 1024**3, "steady_samples_per_s": 1.5},
            {"case": "b", "error": "skipped: this checkout has no lora"}]
    table = bench_memory.table(rows)
    assert "| a | sft | tiny | 1 | 2.000 | 1.000 | 2.00 | train step | 3 | 3.00 | 1.5 |" in table
    assert "| b |" in table and "skipped" in table


def test_per_process_peaks_find_the_command_and_its_workers():
    code = "import time; x = bytearray(64 * 1024 * 1024); time.sleep(0.5)"
    measured, peaks = run_with_process_peaks([sys.executable, "-c", code], sample_interval_s=0.05)
    assert measured.ok
    assert peaks.root_peak_bytes > 60 * 1024**2
    assert peaks.worker_peaks_bytes == []
    fake = ProcessPeaks(1, {1: 10, 2: 30, 3: 20}, {1: "python -m rlhfctl", 2: "ray::RayTrainWorker", 3: "ray::IDLE"})
    assert fake.worker_peaks_bytes == [30]


def test_the_tree_peak_breakdown_groups_the_processes_by_role():
    peaks = ProcessPeaks(1, titles={
        1: "python -m rlhfctl rm train rm.toml", 2: "ray::RayTrainWorker", 3: "ray::RayTrainWorker",
        4: "/site-packages/ray/core/src/ray/raylet/raylet --head", 5: "ray::TrainController.run",
        6: "/usr/bin/python -u /site-packages/ray/_private/log_monitor.py --session-dir=x", 7: ""})
    peaks.at_tree_peak = {1: 100, 2: 1000, 3: 900, 4: 30, 5: 150, 6: 50, 7: 5}
    assert peaks.tree_peak_breakdown() == {"train workers": 1900, "ray::TrainController.run": 150, "driver": 100,
                                           "log_monitor.py": 50, "raylet": 30, "other": 5}
    assert sum(peaks.tree_peak_breakdown().values()) == sum(peaks.at_tree_peak.values())


def test_the_llama_cases_compare_like_for_like():
    """Each FSDP case has a DDP twin with the same model, stage, workers and settings but the strategy."""
    by_label = {case.label: case for case in bench_memory.CASES}
    for case in bench_memory.CASES:
        if case.training.get("strategy") != "fsdp":
            continue
        twin = by_label[case.label.replace("-fsdp", "")]
        assert (twin.stage, twin.model, twin.workers, twin.extra) == (case.stage, case.model, case.workers, case.extra)
        assert {key: value for key, value in case.training.items() if key != "strategy"} == twin.training
