"""The README's first command, end to end: `rlhfctl example run` on the bundled example, and what it must show.

One run (about 1.5 minutes on 2 CPU cores) backs every assertion: SFT lowers the held-out response loss, the reward
model separates chosen from rejected on held-out pairs, PPO raises the mean reward of held-out responses over the
SFT policy while its KL to the SFT policy stays bounded, and DPO and GRPO raise it too.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rlhfctl.cli.app import app
from rlhfctl.example.pipeline import RAW_SOURCES, ExamplePaths

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def example_run(tmp_path_factory) -> tuple[ExamplePaths, str]:
    workdir = tmp_path_factory.mktemp("example") / "example-run"
    result = CliRunner().invoke(app, ["example", "run", "--workdir", str(workdir), "--quiet"])
    assert result.exit_code == 0, result.output
    return ExamplePaths(workdir), result.output


def final_validation(paths: ExamplePaths, stage: str) -> list[dict]:
    lines = (paths.run_dir(stage) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record["split"] == "validation"]


def test_every_stage_ran_and_exported(example_run):
    paths, output = example_run
    for number in range(1, 9):
        assert f"{number}/8" in output
    for source in RAW_SOURCES:
        assert (paths.data_dir / source.output_name).is_file()
    assert "rm_hh.jsonl -> rm.jsonl: 500 rows, 3 skipped" in output  # the converter's report is shown
    for model in map(paths.model_dir, ("tiny", "sft", "rm", "ppo", "dpo", "grpo")):
        assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()
    assert (paths.model_dir("rm") / "reward_stats.json").is_file()
    assert "What each stage bought" in output and "Responses side by side" in output
    assert "warning" not in output


def test_sft_lowers_the_heldout_response_loss(example_run):
    paths, _ = example_run
    losses = [record["loss"] for record in final_validation(paths, "sft")]
    assert losses[0] > 5.0  # random initialisation: about ln(vocabulary)
    assert losses[-1] < 0.25 * losses[0]


def test_reward_model_is_accurate_on_heldout_pairs(example_run):
    paths, _ = example_run
    comparison = json.loads(paths.comparison_file.read_text(encoding="utf-8"))
    assert comparison["rm_accuracy"] >= 0.9
    assert final_validation(paths, "rm")[-1]["accuracy"] == comparison["rm_accuracy"]


def test_ppo_beats_sft_on_heldout_prompts_with_bounded_kl(example_run):
    paths, _ = example_run
    comparison = json.loads(paths.comparison_file.read_text(encoding="utf-8"))
    assert len(comparison["samples"]) == 32
    assert comparison["ppo_mean_score"] > comparison["sft_mean_score"] + 0.5
    # inside PPO, on the same held-out prompts: the score rises from the first evaluation to the last
    validation = final_validation(paths, "ppo")
    assert validation[-1]["score_mean"] > validation[0]["score_mean"] + 0.5
    # KL to the SFT policy (nats per response) grows from zero but stays bounded
    assert validation[0]["kl_k1"] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < comparison["ppo_kl"] < 6.0


def test_dpo_and_grpo_beat_sft_on_heldout_prompts(example_run):
    paths, output = example_run
    comparison = json.loads(paths.comparison_file.read_text(encoding="utf-8"))
    for stage in ("dpo", "grpo"):
        assert comparison[f"{stage}_mean_score"] > comparison["sft_mean_score"] + 0.5, stage
        assert f"mean RM score, {stage.upper()} policy" in output
    assert {"dpo_response", "dpo_score", "grpo_response", "grpo_score"} <= set(comparison["samples"][0])
    # inside the runs: DPO tells the held-out pairs apart, GRPO's held-out reward rises
    assert final_validation(paths, "dpo")[-1]["rewards/accuracies"] >= 0.9
    grpo_validation = final_validation(paths, "grpo")
    assert grpo_validation[-1]["reward_mean"] > grpo_validation[0]["reward_mean"] + 0.5
