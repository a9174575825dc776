"""RM on 2 Ray Train workers x 1 CPU: learning + export via the CLI, worker-failure recovery, interrupt + resume.

All tests share one Ray instance (the session ``ray_cluster`` fixture) and compare against one uninterrupted
reference run with the same seed: recovery and resume must end with the same step count and final metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfctl.cli.app import app
from rlhfctl.config import load_config
from rlhfctl.errors import RuntimeFailure
from rlhfctl.recipes import rm
from rlhfctl.runfiles import REWARD_STATS_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]
RM_CONFIG = REPO_ROOT / "examples" / "configs" / "rm.toml"
RM_DATA = REPO_ROOT / "examples" / "data" / "rm.jsonl"
runner = CliRunner()

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _overrides(run_dir: Path, model_dir: Path, max_failures: int = 1) -> list[str]:
    return [f"general.base_model={model_dir}", f"general.output_dir={run_dir / 'run'}",
            f"general.checkpoint_dir={run_dir / 'model'}", "training.num_training_workers=2", "training.batch_size=16",
            "training.save_every_steps=10", f"training.max_failures={max_failures}"]


def _final_validation(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if row["split"] == "train"]
    assert steps == sorted(set(steps)), "metrics.jsonl must not repeat replayed steps"
    last = [row for row in rows if row["split"] == "validation"][-1]
    return {key: value for key, value in last.items() if key != "time"}  # values, not when they were logged


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, ray_cluster) -> Path:
    """The uninterrupted 2-worker run, through the CLI (plain progress lines: no terminal under CliRunner)."""
    run_dir = tmp_path_factory.mktemp("rm-ray-reference")
    result = runner.invoke(app, ["rm", "train", str(RM_CONFIG), *_overrides(run_dir, tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert "rm: 2 worker(s) running, starting at step 0 of 30" in result.output
    return run_dir


def test_two_workers_learn_and_export_a_plain_hf_model(reference):
    from transformers import AutoModelForSequenceClassification

    final = _final_validation(reference)
    assert final["step"] == 30 and final["accuracy"] >= 0.9
    assert AutoModelForSequenceClassification.from_pretrained(reference / "model").config.num_labels == 1
    stats = json.loads((reference / "model" / REWARD_STATS_FILE).read_text())
    assert stats["count"] == 100 and stats["mean"] == pytest.approx(final["reward_mean"])
    assert (reference / "run" / "resolved_config.toml").exists()
    assert any((reference / "run" / "tensorboard").iterdir())
    evaluated = runner.invoke(app, ["rm", "eval", str(reference / "model"), str(RM_DATA), "--json"])
    assert json.loads(evaluated.output)["accuracy"] >= 0.9


def test_a_killed_worker_recovers_to_the_uninterrupted_result(reference, tmp_path, tiny_model_dir):
    config = load_config(RM_CONFIG, overrides=_overrides(tmp_path, tiny_model_dir, max_failures=1))
    marker = tmp_path / "killed"
    summary = rm.run(config, fault_injection={"after_step": 10, "marker": str(marker), "action": "kill"})
    assert marker.exists()  # the worker really died once
    assert summary.steps == 30
    assert _final_validation(tmp_path) == _final_validation(reference)


def test_failure_without_retries_names_the_checkpoint_and_resume_continues_exactly(reference, tmp_path,
                                                                                  tiny_model_dir):
    config = load_config(RM_CONFIG, overrides=_overrides(tmp_path, tiny_model_dir, max_failures=0))
    with pytest.raises(RuntimeFailure) as failure:
        rm.run(config, fault_injection={"after_step": 10, "marker": str(tmp_path / "killed"), "action": "kill"},
               config_path="rm.toml")
    assert "worker rank 1" in failure.value.message
    assert "checkpoint_00000010 (step 10)" in failure.value.message
    assert failure.value.hint == "Continue with: rlhfctl rm train rm.toml --resume"

    result = runner.invoke(app, ["rm", "train", str(RM_CONFIG), *_overrides(tmp_path, tiny_model_dir, 0),
                                 "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "resumed from step 10" in result.output
    assert _final_validation(tmp_path) == _final_validation(reference)
