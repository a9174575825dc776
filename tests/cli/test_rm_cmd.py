"""`rlhfctl rm train/eval/score` through the CLI: dry run, user errors (exit 2), a short run, eval and score."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfctl.cli.app import app

REPO_ROOT = Path(__file__).resolve().parents[2]
RM_CONFIG = REPO_ROOT / "examples" / "configs" / "rm.toml"
RM_DATA = REPO_ROOT / "examples" / "data" / "rm.jsonl"
runner = CliRunner()


def overrides(tmp_path: Path, model_dir: Path, workers: int = 1) -> list[str]:
    return [f"general.base_model={model_dir}", f"general.output_dir={tmp_path / 'run'}",
            f"general.checkpoint_dir={tmp_path / 'model'}", f"training.num_training_workers={workers}",
            "training.batch_size=16"]


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory, tiny_model_dir) -> Path:
    """One short single-worker `rm train` through the CLI; its export is used by the eval/score tests."""
    tmp_path = tmp_path_factory.mktemp("rm-cli")
    result = runner.invoke(app, ["rm", "train", str(RM_CONFIG), *overrides(tmp_path, tiny_model_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "rm training finished: 58 steps" in result.output
    assert "validation_accuracy" in result.output and str(tmp_path / "model") in result.output
    # the example's chosen replies are all the longer ones: the length-bias warning, in the summary even with --quiet
    assert "health warning rm_length_bias at step" in result.output
    return tmp_path


def test_help_shows_examples():
    result = runner.invoke(app, ["rm", "train", "--help"])
    assert result.exit_code == 0
    assert "--resume" in result.output and "--dry-run" in result.output and "--force" in result.output
    assert "rlhfctl rm train examples/configs/rm.toml" in result.output


def test_dry_run_prints_the_plan_and_starts_no_ray(tmp_path, tiny_model_dir):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from rlhfctl.cli.app import app\n"
        f"result = CliRunner().invoke(app, ['rm', 'train', {str(RM_CONFIG)!r}, "
        f"*{overrides(tmp_path, tiny_model_dir, workers=2)!r}, '--dry-run'])\n"
        "print(result.output)\n"
        "print('IMPORTED', sorted(m for m in ('ray', 'torch', 'transformers') if m in sys.modules))\n"
        "sys.exit(result.exit_code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 workers x {1 CPU} on an embedded local Ray" in done.stdout
    assert "total steps       30" in done.stdout and "training rows     450" in done.stdout
    assert "IMPORTED []" in done.stdout
    assert not (tmp_path / "run").exists()


def test_resume_with_nothing_to_resume_exits_2(tmp_path, tiny_model_dir):
    result = runner.invoke(app, ["rm", "train", str(RM_CONFIG), *overrides(tmp_path, tiny_model_dir), "--resume"])
    assert result.exit_code == 2
    assert "nothing to resume" in result.output


def test_auto_without_resume_exits_2(tmp_path, tiny_model_dir):
    result = runner.invoke(app, ["rm", "train", str(RM_CONFIG), "auto", *overrides(tmp_path, tiny_model_dir)])
    assert result.exit_code == 2
    assert "--resume auto" in result.output


def test_bad_data_is_reported_before_training(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "chosen": "a"}\n', encoding="utf-8")
    result = runner.invoke(app, ["rm", "train", str(RM_CONFIG), *overrides(tmp_path, tiny_model_dir),
                                 f"dataset.train_file={bad}"])
    assert result.exit_code == 2
    assert "bad.jsonl:1" in result.output and "rejected" in result.output
    assert not (tmp_path / "run").exists()


def test_a_second_run_refuses_then_resume_auto_and_force_work(trained_rm, tiny_model_dir):
    args = ["rm", "train", str(RM_CONFIG), *overrides(trained_rm, tiny_model_dir), "--quiet"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--force" in refused.output
    metrics_file = trained_rm / "run" / "metrics.jsonl"
    validation_rows = _validation_rows(metrics_file)
    assert [row["step"] for row in validation_rows] == [29, 58]  # after each epoch
    resumed = runner.invoke(app, [*args, "--resume", "auto"])  # finished run: nothing left, re-exports
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from step 58" in resumed.output
    assert _validation_rows(metrics_file) == validation_rows  # reported again, not recorded twice
    # a driver killed before the final validation reached it (its workers finished): the resume records it
    rows = metrics_file.read_text(encoding="utf-8").splitlines()
    final_validation = max(index for index, line in enumerate(rows) if '"validation"' in line)
    metrics_file.write_text("".join(line + "\n" for index, line in enumerate(rows) if index != final_validation),
                            encoding="utf-8")
    resumed = runner.invoke(app, [*args, "--resume", "auto"])
    assert resumed.exit_code == 0, resumed.output
    assert _values(_validation_rows(metrics_file)) == _values(validation_rows)


def _validation_rows(metrics_file: Path) -> list[dict]:
    rows = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines()]
    return [row for row in rows if row["split"] == "validation"]


def _values(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "time"} for row in rows]


def test_eval_json_reports_accuracy(trained_rm):
    result = runner.invoke(app, ["rm", "eval", str(trained_rm / "model"), str(RM_DATA), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["accuracy"] >= 0.9 and metrics["pairs"] == 500
    assert {"margin", "reward_mean", "reward_std", "chosen_reward_mean", "rejected_reward_mean"} <= set(metrics)
    # the example's chosen replies are all longer than the rejected ones: length alone ranks every pair right
    assert metrics["longer_wins_accuracy"] == 1.0 and -1.0 <= metrics["length_bias_spearman"] <= 1.0


def test_score_text_and_file(trained_rm, tmp_path):
    model = str(trained_rm / "model")
    text = runner.invoke(app, ["rm", "score", model, "--text", "\n\nHuman: hi\n\nAssistant: No. Do it yourself."])
    assert text.exit_code == 0, text.output
    float(text.output.strip())
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "\n\nHuman: How do I fix my lamp?\n\nAssistant:",
                                "response": " Sure! Happy to help. Hope that helps!"}) + "\n"
                    + RM_DATA.read_text().splitlines()[0] + "\n", encoding="utf-8")
    scored = runner.invoke(app, ["rm", "score", model, str(rows)])
    assert scored.exit_code == 0, scored.output
    first, second = [json.loads(line) for line in scored.output.splitlines()]
    assert first["line"] == 1 and isinstance(first["reward"], float)
    assert second["chosen_reward"] > second["rejected_reward"]


def test_score_needs_exactly_one_input_and_an_existing_checkpoint(tmp_path):
    both = runner.invoke(app, ["rm", "score", str(tmp_path), str(RM_DATA), "--text", "x"])
    assert both.exit_code == 2 and "exactly one" in both.output
    missing = runner.invoke(app, ["rm", "score", str(tmp_path / "nope"), "--text", "x"])
    assert missing.exit_code == 2 and "not found" in missing.output
