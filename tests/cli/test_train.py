"""`rlhfctl sft train` through the CLI: dry run, user errors (exit 2), a short real run and its summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
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


# ----------------------------------------------------------------------------------------------- the memory plan


def shape_only_model(folder: Path, **shape) -> Path:
    """A model folder holding only config.json (the memory plan never loads weights)."""
    folder.mkdir(parents=True)
    config = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 512, "num_hidden_layers": 8,
              "num_attention_heads": 8, "intermediate_size": 1536, **shape}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_dry_run_json_is_one_object_with_the_memory_plan(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr("rlhfctl.config.layout.usable_cpus", lambda: 2)  # "auto" on a 2-core machine without GPUs
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    result = runner.invoke(app, ["sft", "train", str(SFT_CONFIG), *paths_into(tmp_path, tiny_model_dir),
                                 "training.epochs=2", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert (plan["stage"], plan["total_steps"], plan["workers"], plan["mode"]) == ("sft", 24, 1, "local")
    assert plan["resources_per_worker"] == {"CPU": 2.0}
    assert plan["layout"] == "1 worker x {2 CPU} in this process, no Ray start-up (auto: one machine, 2 CPUs, no GPU)"
    assert plan["notes"]["loss on"] == "response tokens only" and plan["warnings"] == []
    memory = plan["memory"]
    breakdown = memory["breakdown"]
    assert set(breakdown) == {"weights", "gradients", "optimizer_state", "activations", "generation_cache",
                              "framework_overhead", "data"}
    assert memory["per_worker_peak_bytes"] == sum(breakdown.values()) > 0
    assert memory["models"]["model"]["model_type"] == "gpt2"
    assert memory["trainable_parameters"] == 150_208  # the tiny kit's GPT-2
    assert memory["verdict"] in ("fits", "tight", "refuse") and memory["available_bytes_per_worker"] > 0
    assert not (tmp_path / "run").exists()


def test_dry_run_table_shows_the_memory_rows(tmp_path):
    model = shape_only_model(tmp_path / "llama")
    result = runner.invoke(app, ["rm", "train", str(REPO_ROOT / "examples" / "configs" / "rm.toml"),
                                 *paths_into(tmp_path, model), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "memory peak" in result.output and "at the train step" in result.output
    assert "reward_model" in result.output and "llama: weights" in result.output
    assert "memory available" in result.output


def test_json_without_dry_run_is_a_user_error(tmp_path, tiny_model_dir):
    result = runner.invoke(app, ["sft", "train", str(SFT_CONFIG), *paths_into(tmp_path, tiny_model_dir), "--json"])
    assert result.exit_code == 2
    assert "--json goes with --dry-run" in result.output


def test_a_run_that_clearly_cannot_fit_is_refused_before_anything_starts(tmp_path):
    # ~330 B parameters: no machine running this suite holds its weights, let alone Adam's state
    model = shape_only_model(tmp_path / "huge", hidden_size=16384, num_hidden_layers=100, num_attention_heads=128,
                             intermediate_size=53248)
    result = runner.invoke(app, ["sft", "train", str(SFT_CONFIG), *paths_into(tmp_path, model), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "this sft run needs about" in result.output and "but a worker has" in result.output
    assert "--no-memory-check" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "export").exists()
    # --no-memory-check skips the check: the run goes on to load the model (a folder without weights: exit 2 too)
    unchecked = runner.invoke(app, ["sft", "train", str(SFT_CONFIG), *paths_into(tmp_path, model), "--quiet",
                                    "training.num_training_workers=1", "--no-memory-check"])
    assert unchecked.exit_code == 2, unchecked.output
    assert "needs about" not in unchecked.output and "could not be loaded" in unchecked.output


def test_the_memory_probe_is_injected_and_a_small_machine_refuses_a_small_model(tmp_path, tiny_model_dir):
    from rlhfctl.cli._train import run_train_command
    from rlhfctl.errors import UserError
    from rlhfctl.training.memory_probe import DeviceMemory

    tiny_machine = lambda job: DeviceMemory(64 * 1024**2, "cpu", "a 64 MiB test machine")  # noqa: E731
    with pytest.raises(UserError, match="but a worker has 64 MiB \\(a 64 MiB test machine\\)"):
        run_train_command("sft", SFT_CONFIG, paths_into(tmp_path, tiny_model_dir), resume=False, dry_run=False,
                          quiet=True, force=False, memory_probe=tiny_machine)
    assert not (tmp_path / "run").exists()
