"""`rlhfctl ppo train` and `rlhfctl ppo sample` through the root app (CliRunner), on the tiny model."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfctl.cli.app import app

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT / "examples" / "data"

runner = CliRunner()


def write_config(tmp_path: Path, model_dir: Path, prompts: Path = DATA / "ppo.jsonl") -> Path:
    path = tmp_path / "ppo.toml"
    path.write_text(
        f"""stage = "ppo"
[general]
model_name = "{model_dir}"
rm_name = "{model_dir}"
output_dir = "run"
checkpoint_dir = "export"
[dataset]
train_file = "{prompts}"
validation_split_percentage = 10
max_length = 64
[training]
num_training_workers = 1
experience_batch_size = 4
batch_size = 4
ppo_epochs = 1
learning_rate = 1e-4
[generation]
max_new_tokens = 8
""",
        encoding="utf-8",
    )
    return path


def test_help_lists_both_commands():
    result = runner.invoke(app, ["ppo", "--help"])
    assert result.exit_code == 0
    assert "train" in result.output and "sample" in result.output


def test_dry_run_prints_the_plan_and_the_reward_head_warning(tmp_path, tiny_model_dir):
    result = runner.invoke(app, ["ppo", "train", str(write_config(tmp_path, tiny_model_dir)), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "total steps" in result.output and "68" in result.output  # 270 prompts / 4 per step
    assert "random reward" in result.output
    assert not (tmp_path / "run").exists()


def test_inconsistent_settings_exit_2_naming_the_key(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir)
    result = runner.invoke(app, ["ppo", "train", str(config), "training.num_mini_batches=3", "--dry-run"])
    assert result.exit_code == 2
    assert "training.num_mini_batches" in result.output
    assert "Traceback" not in result.output


def test_train_runs_in_process_and_exports(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(line + "\n" for line in (DATA / "ppo.jsonl").read_text().splitlines()[:9]),
                       encoding="utf-8")
    config = write_config(tmp_path, tiny_model_dir, prompts)
    result = runner.invoke(app, ["ppo", "train", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "train_score_mean" in result.output
    assert (tmp_path / "export" / "model.safetensors").exists()
    assert (tmp_path / "export" / "value_model" / "model.safetensors").exists()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["split"] == "train"] == [1, 2]
    again = runner.invoke(app, ["ppo", "train", str(config), "--quiet"])
    assert again.exit_code == 2 and "--force" in again.output


def test_sample_writes_json_lines_with_scores(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "\\n\\nHuman: hi\\n\\nAssistant:"}\n{"prompt": "hello"}\n', encoding="utf-8")
    args = ["ppo", "sample", str(tiny_model_dir), str(prompts), "--rm", str(tiny_model_dir), "-n", "2",
            "--max-new-tokens", "5", "--seed", "7"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 4
    assert rows[0]["prompt"] == "\n\nHuman: hi\n\nAssistant:" and isinstance(rows[0]["score"], float)
    assert "mean score" in result.stderr
    same_seed = runner.invoke(app, args)
    assert same_seed.stdout == result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing-policy", "PROMPTS"], "policy checkpoint not found"),
        (["POLICY", "PROMPTS", "--rm", "missing-rm"], "reward model checkpoint not found"),
        (["POLICY", "PROMPTS", "--temperature", "0"], "--temperature"),
    ],
)
def test_sample_refuses_bad_arguments(tmp_path, tiny_model_dir, args, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n', encoding="utf-8")
    replaced = [str(tiny_model_dir) if arg == "POLICY" else str(prompts) if arg == "PROMPTS" else
                str(tmp_path / arg) if arg.startswith("missing") else arg for arg in args]
    result = runner.invoke(app, ["ppo", "sample", *replaced])
    assert result.exit_code == 2
    assert message in result.output


def test_sample_reports_a_bad_prompt_line(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n{"nothing": 1}\n', encoding="utf-8")
    result = runner.invoke(app, ["ppo", "sample", str(tiny_model_dir), str(prompts)])
    assert result.exit_code == 2
    assert "prompts.jsonl:2" in result.output


def test_a_runaway_kl_stops_the_run_keeping_its_checkpoint_and_printing_the_resume_command(tmp_path,
                                                                                          tiny_model_dir):
    """kl_coeff = 0 and a high learning rate: nothing holds the policy near the reference, the KL ceiling alarm
    (action "stop", the default) stops the run cleanly; exit 1, the reason, the checkpoint and how to resume."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join((DATA / "ppo.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:120]),
                       encoding="utf-8")
    config = write_config(tmp_path, tiny_model_dir, prompts)
    overrides = ["training.kl_coeff=0", "training.learning_rate=1e-2", "training.experience_batch_size=8",
                 "training.batch_size=8", "training.ppo_epochs=2", "training.sample_every_steps=0",
                 "generation.max_new_tokens=16", "monitor.kl_max=8", "monitor.kl_patience=2", "general.report_to=[]"]
    result = runner.invoke(app, ["ppo", "train", str(config), *overrides, "--quiet"])
    assert result.exit_code == 1, result.output
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    (alarm,) = [event for event in events if event["kind"] == "health" and event["action"] == "stop"]
    step = alarm["step"]
    assert (alarm["check"], alarm["split"]) == ("kl_ceiling", "train")
    assert alarm["value"] > 8 and events[-1]["kind"] == "failure" and events[-1]["step"] == step
    output = " ".join(result.output.split())
    assert f"ppo training stopped by the kl_ceiling health check at step {step}: KL from the reference policy " \
           "(kl_k1)" in output
    assert f"checkpoint_{step:08d} (step {step})" in output
    assert f"rlhfctl ppo train {shlex.join([str(config), *overrides])} --resume" in output
    assert (tmp_path / "run" / "ppo_run" / f"checkpoint_{step:08d}").is_dir() and not (tmp_path / "export").exists()
    kl = [row["kl_k1"] for row in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
          if row["split"] == "train"]
    assert len(kl) == step and kl[-2] > 8 and kl[-1] > 8  # two logged steps in a row above the ceiling
