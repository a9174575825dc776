"""`rlhfctl validate-config`, `config show`, `config migrate`: exit codes and messages through CliRunner."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfctl.cli.app import app

runner = CliRunner()

RM_TOML = """\
stage = "rm"
[general]
base_model = "openai-community/gpt2"
output_dir = "runs/rm"
checkpoint_dir = "checkpoints/rm"
[dataset]
train_file = "rm.jsonl"
[training]
num_training_workers = 2
resources_per_worker = { CPU = 1 }
"""


@pytest.fixture
def rm_config(tmp_path: Path) -> Path:
    (tmp_path / "rm.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    path = tmp_path / "rm.toml"
    path.write_text(RM_TOML)
    return path


def test_validate_config_prints_a_summary(rm_config: Path, monkeypatch) -> None:
    monkeypatch.setattr("rlhfctl.config.layout.usable_cpus", lambda: 8)
    result = runner.invoke(app, ["validate-config", str(rm_config), "training.learning_rate=3e-5"])
    assert result.exit_code == 0, result.output
    assert "configures the rm stage" in result.stdout
    assert "[training]" in result.stdout and "3e-05" in result.stdout
    assert "warning" not in result.output


def test_validate_config_json(rm_config: Path, monkeypatch) -> None:
    monkeypatch.setattr("rlhfctl.config.layout.usable_cpus", lambda: 1)
    result = runner.invoke(app, ["validate-config", str(rm_config), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["valid"] is True and report["stage"] == "rm"
    assert report["config"]["training"]["num_training_workers"] == 2
    assert report["config"]["dataset"]["validation_file"] is None
    assert "needs 2 CPUs but this machine has 1" in report["warnings"][0]


def test_validate_config_warns_but_succeeds_when_cpus_are_short(rm_config: Path, monkeypatch) -> None:
    monkeypatch.setattr("rlhfctl.config.layout.usable_cpus", lambda: 2)
    result = runner.invoke(app, ["validate-config", str(rm_config), "training.resources_per_worker={CPU=8}"])
    assert result.exit_code == 0
    assert "warning: 2 workers x { CPU = 8 } needs 16 CPUs but this machine has 2" in result.stdout


def test_validate_config_with_a_cluster_address_defers_the_check(rm_config: Path, monkeypatch) -> None:
    monkeypatch.setattr("rlhfctl.config.layout.usable_cpus", lambda: 2)
    result = runner.invoke(app, ["validate-config", str(rm_config), "general.ray_address=auto",
                                 "training.num_training_workers=16"])
    assert result.exit_code == 0
    assert "checked against the Ray cluster at auto when training starts" in result.stdout
    assert "warning" not in result.stdout


def test_validate_config_reports_every_problem_and_exits_2(rm_config: Path) -> None:
    rm_config.write_text(RM_TOML.replace("num_training_workers = 2", "num_training_workers = 0\nlearnin_rate = 1"))
    (rm_config.parent / "rm.jsonl").unlink()
    result = runner.invoke(app, ["validate-config", str(rm_config), "training.epochs=-1"])
    assert result.exit_code == 2
    assert "4 problems in the config" in result.stderr
    assert f"{rm_config}:7: dataset.train_file: file not found" in result.stderr
    assert (f'{rm_config}:9: training.num_training_workers: expected "auto" or a whole number of workers (1 or '
            "more), found 0") in result.stderr
    assert "did you mean 'training.learning_rate'?" in result.stderr
    assert "training.epochs: must be greater than 0, found -1 (set on the command line)" in result.stderr
    assert "Traceback" not in result.output


def test_validate_config_json_reports_problems_too(rm_config: Path) -> None:
    result = runner.invoke(app, ["validate-config", str(rm_config), "training.epochs=0", "--json"])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert report["problems"][0]["key"] == "training.epochs"


def test_validate_config_syntax_error_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "b.toml"
    broken.write_text("stage = \n")
    result = runner.invoke(app, ["validate-config", str(broken)])
    assert result.exit_code == 2 and f"{broken}:1: TOML syntax error" in result.stderr
    result = runner.invoke(app, ["validate-config", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "the config file does not exist" in result.stderr


def test_config_show_prints_resolved_toml(rm_config: Path) -> None:
    result = runner.invoke(app, ["config", "show", str(rm_config), "training.epochs=4"])
    assert result.exit_code == 0, result.output
    data = tomllib.loads(result.stdout)
    assert data["training"]["epochs"] == 4
    assert data["dataset"]["train_file"] == str(rm_config.parent / "rm.jsonl")
    assert data["training"]["optimizer"] == "AdamW"  # defaults filled in


def test_config_show_errors_and_skip_file_checks(rm_config: Path) -> None:
    (rm_config.parent / "rm.jsonl").unlink()
    assert runner.invoke(app, ["config", "show", str(rm_config)]).exit_code == 2
    result = runner.invoke(app, ["config", "show", str(rm_config), "--skip-file-checks"])
    assert result.exit_code == 0
    result = runner.invoke(app, ["config", "show", str(rm_config), "training.bogus=1"])
    assert result.exit_code == 2 and "training.bogus: unknown key" in result.stderr


PPO_CONF = """\
{
    "General": {"model_name": "EleutherAI/gpt2", "model_pretrain": None, "rm_name": "EleutherAI/gpt2",
                "rm_pretrain": None,},
    "Dataset": {"train_file": "prompts.jsonl", "validation_file": None, "validation_split_percentage": 5},
    "Training": {"optimizer": "AdamW", "experience_batch_size": 2, "training_iteration": 10,
                 "learning_rate": 1e-5, "kl_coeff": 0.2, "num_training_workers": 2,
                 "resources_per_worker": {"CPU": 1},},  # trailing commas, like llm-on-ray's
}
"""


def test_config_migrate_writes_a_valid_config_and_lists_the_notes(tmp_path: Path) -> None:
    source = tmp_path / "ppo.conf"
    source.write_text(PPO_CONF)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    target = tmp_path / "ppo.toml"
    result = runner.invoke(app, ["config", "migrate", str(source), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert "Training.training_iteration: no equivalent" in result.stdout
    assert "#   - Training.training_iteration: no equivalent" in target.read_text()
    assert runner.invoke(app, ["validate-config", str(target)]).exit_code == 0
    assert list(tmp_path.glob(".ppo.toml.*")) == []  # no temporary file left behind


def test_config_migrate_refusals(tmp_path: Path) -> None:
    source = tmp_path / "ppo.conf"
    source.write_text(PPO_CONF)
    target = tmp_path / "ppo.toml"
    target.write_text("keep me")
    result = runner.invoke(app, ["config", "migrate", str(source), "-o", str(target)])
    assert result.exit_code == 2 and "already exists" in result.stderr and "--force" in result.stderr
    assert target.read_text() == "keep me"
    assert runner.invoke(app, ["config", "migrate", str(source), "-o", str(target), "--force"]).exit_code == 0
    result = runner.invoke(app, ["config", "migrate", str(source), "-o", str(source), "--force"])
    assert result.exit_code == 2 and "is the input file" in result.stderr
    assert source.read_text() == PPO_CONF
    result = runner.invoke(app, ["config", "migrate", str(tmp_path / "missing.conf"), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "not found" in result.stderr
    result = runner.invoke(app, ["config", "migrate", str(source), "-o", str(tmp_path / "y.toml"), "--stage", "dpo"])
    assert result.exit_code == 2


def test_config_migrate_refuses_code_and_runs_none_of_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    source = tmp_path / "evil.conf"
    source.write_text('{\n  "General": {\n    "base_model": __import__(\'os\').system(\'touch ' + str(marker)
                      + "'),\n  },\n}\n")
    target = tmp_path / "evil.toml"
    result = runner.invoke(app, ["config", "migrate", str(source), "-o", str(target), "--stage", "rm"])
    assert result.exit_code == 2
    assert f"{source}:3: the keyword or name `__import__` is not allowed" in result.stderr
    assert not marker.exists()
    assert not target.exists()


def test_config_group_without_a_command_shows_help() -> None:
    result = runner.invoke(app, ["config"])
    assert "show" in result.output and "migrate" in result.output
