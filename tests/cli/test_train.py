"""`rlhfctl sft train` through the CLI: dry run, user errors (exit 2), a short real run and its summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from rlhfctl.cli.app import app

REPO_ROOT = Path(__file__).resolve().parents[2]
SFT_CONFIG = REPO_ROOT / "examples" / "configs" / "sft.toml"
runner = CliRunner()


def paths_into(tmp_path: Path, model_dir: Path) -> list[str]:
    return [f"general.base_model={model_dir}", f"general.output_dir={tmp_path / 'run'}",
            f"general.checkpoint_dir={tmp_path / 'export'}"]


def test_help_lists_train_with_examples():
    result = runner.invoke(app, ["sft", "train", "--help"])
    assert result.exit_code == 0
    assert "--dry-run" in result.output and "--resume" in result.output
    assert "rlhfctl sft train examples/configs/sft.toml" in result.output


def test_dry_run_prints_the_plan_and_imports_neither_ray_nor_torch(tmp_path, tiny_model_dir):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from rlhfctl.cli.app import app\n"
        f"result = CliRunner().invoke(app, ['sft', 'train', {str(SFT_CONFIG)!r}, *{paths_into(tmp_path, tiny_model_dir)!r},"
        " 'training.epochs=2', '--dry-run'])\n"
        "print(result.output)\n"
        "print('IMPORTED', sorted(m for m in ('ray', 'torch', 'transformers') if m in sys.modules))\n"
        "sys.exit(result.exit_code)\n"
    )
    no_gpus = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # "auto" gives the same plan on any machine
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=no_gpus)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "IMPORTED []" in completed.stdout
    assert "no Ray start-up (auto: one machine" in " ".join(completed.stdout.split())  # num_training_workers = "auto"
    assert "total steps       24" in completed.stdout  # 360 rows / 1 worker / 32 per batch = 12 steps x 2 epochs
    assert "response tokens only" in completed.stdout
    assert not (tmp_path / "run").exists()


def test_bad_data_row_exits_2_naming_file_line_and_key(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "response": "hello"}\n{"instruction": "hi", "reply": "x"}\n',
                   encoding="utf-8")
    result = runner.invoke(app, ["sft", "train", str(SFT_CONFIG), *paths_into(tmp_path, tiny_model_dir),
                                 f"dataset.train_file={bad}", "--dry-run"])
    assert result.exit_code == 2
    assert f"{bad}:2" in result.output and "response" in result.output
    assert "Traceback" not in result.output


def test_unknown_override_and_wrong_stage_exit_2(tmp_path, tiny_model_dir):
    result = runner.invoke(app, ["sft", "train", str(SFT_CONFIG), *paths_into(tmp_path, tiny_model_dir),
                                 "training.epoch=2", "--dry-run"])
    assert result.exit_code == 2
    assert "training.epochs" in result.output  # the suggestion
    rm_config = REPO_ROOT / "examples" / "configs" / "rm.toml"
    result = runner.invoke(app, ["sft", "train", str(rm_config), *paths_into(tmp_path, tiny_model_dir), "--dry-run"])
    assert result.exit_code == 2
    assert "rm" in result.output


def test_one_worker_run_writes_summary_metrics_and_export_then_refuses_to_clobber(tmp_path, tiny_model_dir):
    args = ["sft", "train", str(SFT_CONFIG), *paths_into(tmp_path, tiny_model_dir),
            "training.num_training_workers=1", "training.epochs=1", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "sft training finished: 12 steps" in result.output  # 360 rows in batches of 32 on one worker
    assert "validation_loss" in result.output and "validation_initial_loss" in result.output
    assert (tmp_path / "export" / "model.safetensors").is_file()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "validation"] == [0, 12]

    again = runner.invoke(app, args)
    assert again.exit_code == 2
    assert "--force" in again.output
