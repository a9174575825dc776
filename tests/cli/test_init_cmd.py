"""`rlhfctl init`: the wizard driven programmatically, flags, --defaults, no-terminal behaviour, refusals."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfctl.cli import init_cmd
from rlhfctl.cli.app import app
from rlhfctl.config.schema import STAGES
from rlhfctl.config.wizard import InitAnswers
from rlhfctl.errors import UserError

runner = CliRunner()


class ScriptedPrompter:
    """Answers questions from a list, in order, and records what was asked."""

    def __init__(self, replies: Sequence[object]) -> None:
        self.replies = list(replies)
        self.asked: list[str] = []

    def _next(self, question: str, validate=None) -> object:
        self.asked.append(question)
        reply = self.replies.pop(0)
        if validate is not None and isinstance(reply, str):
            assert validate(reply) is None, f"{question!r} rejected {reply!r}"
        return reply

    def select(self, question: str, choices: Sequence[str], default: str) -> str:
        reply = self._next(question)
        assert reply in choices
        return reply

    def text(self, question: str, default: str, validate=None) -> str:
        reply = self._next(question, validate)
        return default if reply is None else reply  # None: accept the default

    def confirm(self, question: str, default: bool) -> bool:
        return self._next(question)


@pytest.fixture
def terminal(monkeypatch):
    """Pretend stdin is a terminal and answer with the prompter the test installs."""
    holder: dict[str, ScriptedPrompter] = {}
    monkeypatch.setattr(init_cmd, "stdin_is_terminal", lambda: True)
    monkeypatch.setattr(init_cmd, "make_prompter", lambda: holder["prompter"])
    return holder


def _make_named_files_exist(config_path: Path) -> None:
    data = tomllib.loads(config_path.read_text())
    for key in ("train_file", "validation_file"):
        if key in data["dataset"]:
            target = config_path.parent / data["dataset"][key]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("{}\n")
    for key in ("base_model", "model_name", "rm_name", "model_pretrain", "rm_pretrain"):
        value = data["general"].get(key)
        if value and (value.startswith((".", "/")) or key.endswith("pretrain")):
            (config_path.parent / value).mkdir(parents=True, exist_ok=True)


def test_wizard_rm_end_to_end(tmp_path: Path, terminal, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    terminal["prompter"] = prompter = ScriptedPrompter([
        "rm",  # stage
        "./models/tiny", "data/pairs.jsonl", "", "runs/my-rm", "exports/my-rm",  # model, data, val, dirs
        "2", "1", False,  # workers, cpus, gpu
        "2e-5", "3", "4",  # lr, epochs, batch
    ])
    result = runner.invoke(app, ["init", "-o", "configs/rm.toml"])
    assert result.exit_code == 0, result.output
    assert prompter.replies == []
    assert not any("KL" in question for question in prompter.asked)
    config_path = tmp_path / "configs" / "rm.toml"
    text = config_path.read_text()
    assert "# Pairs per worker per micro-step." in text  # the template's comments survive
    data = tomllib.loads(text)
    assert data["stage"] == "rm"
    assert data["general"]["base_model"] == "../models/tiny"  # relative to the config's folder
    assert data["dataset"]["train_file"] == "../data/pairs.jsonl"
    assert data["general"]["output_dir"] == "../runs/my-rm"
    assert data["training"]["learning_rate"] == 2e-5 and data["training"]["epochs"] == 3
    assert data["training"]["batch_size"] == 4 and data["training"]["resources_per_worker"] == {"CPU": 1}
    _make_named_files_exist(config_path)
    assert runner.invoke(app, ["validate-config", str(config_path)]).exit_code == 0


def test_wizard_ppo_asks_the_ppo_questions_and_skips_answers_given_as_flags(tmp_path: Path, terminal,
                                                                            monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    terminal["prompter"] = prompter = ScriptedPrompter([
        "gpt2-policy", "", "gpt2-reward", "checkpoints/rm",  # policy, sft export, rm, rm export
        "prompts.jsonl", "val.jsonl", None, None,  # data, validation, dirs (defaults)
        "1", "2", True,  # workers, cpus, gpu
        None, None, None,  # lr, epochs, batch (defaults)
        "0.2", "24",  # kl_coeff, max_new_tokens
    ])
    target = tmp_path / "ppo.toml"
    result = runner.invoke(app, ["init", "--stage", "ppo", "-o", "ppo.toml"])
    assert result.exit_code == 0, result.output
    assert prompter.replies == []
    data = tomllib.loads(target.read_text())
    assert data["general"]["model_name"] == "gpt2-policy" and "model_pretrain" not in data["general"]
    assert data["general"]["rm_pretrain"] == "checkpoints/rm"
    assert data["dataset"]["validation_file"] == "val.jsonl"
    assert "validation_split_percentage" not in data["dataset"]
    assert data["training"]["resources_per_worker"] == {"CPU": 2, "GPU": 1}
    assert data["training"]["kl_coeff"] == 0.2 and data["generation"]["max_new_tokens"] == 24
    assert data["training"]["learning_rate"] == 1e-6  # the default was accepted
    assert data["general"]["output_dir"] == "runs/ppo"

    terminal["prompter"] = prompter = ScriptedPrompter(["", "", "", None, None, None, False, None, None])
    result = runner.invoke(app, ["init", "--stage", "ppo", "-o", str(tmp_path / "p2.toml"), "--model", "m",
                                 "--rm-model", "r", "--workers", "1", "--epochs", "2", "--kl-coeff", "0.1",
                                 "--max-new-tokens", "8", "--train-file", "p.jsonl"])
    assert result.exit_code == 0, result.output
    assert not any("Policy model" in question or "KL" in question for question in prompter.asked)


def test_wizard_rejects_a_bad_typed_answer(tmp_path: Path) -> None:
    class Sloppy(ScriptedPrompter):
        def text(self, question, default, validate=None):  # a prompter that does not enforce validation
            self.asked.append(question)
            return self.replies.pop(0)

    answers = InitAnswers("sft", model="m", train_file="t", validation_file="", output_dir="o",
                          checkpoint_dir="c")
    with pytest.raises(UserError, match="Number of training workers .*: enter a whole number"):
        init_cmd.run_wizard(Sloppy(["zero"]), answers)


@pytest.mark.parametrize("stage", STAGES)
def test_defaults_write_a_file_that_validates_once_its_files_exist(stage: str, tmp_path: Path) -> None:
    target = tmp_path / f"{stage}.toml"
    result = runner.invoke(app, ["init", "--stage", stage, "--defaults", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert f"wrote {target}" in result.stdout
    assert "does not exist" not in result.stdout
    data = tomllib.loads(target.read_text())
    assert data["stage"] == stage
    assert runner.invoke(app, ["validate-config", str(target)]).exit_code == 2  # the data file is not there yet
    _make_named_files_exist(target)
    result = runner.invoke(app, ["validate-config", str(target)])
    assert result.exit_code == 0, result.output


def test_every_answer_as_a_flag_needs_no_terminal(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [
        "init", "--stage", "rm", "-o", "rm.toml", "--model", "org/model", "--train-file", "d.jsonl",
        "--output-dir", "r", "--checkpoint-dir", "c", "--workers", "4", "--cpus-per-worker", "0.5", "--no-gpu",
        "--learning-rate", "5e-6", "--epochs", "2", "--batch-size", "16",
    ])
    assert result.exit_code == 0, result.output
    data = tomllib.loads((tmp_path / "rm.toml").read_text())
    assert data["training"]["resources_per_worker"] == {"CPU": 0.5}
    assert data["training"]["num_training_workers"] == 4 and data["general"]["base_model"] == "org/model"


def test_no_terminal_never_prompts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(init_cmd, "make_prompter", lambda: pytest.fail("must not prompt without a terminal"))
    result = runner.invoke(app, ["init", "-o", str(tmp_path / "x.toml")])
    assert result.exit_code == 2 and "no terminal" in result.stderr and "--defaults" in result.stderr
    result = runner.invoke(app, ["init", "--stage", "rm", "--epochs", "2", "-o", str(tmp_path / "x.toml")])
    assert result.exit_code == 2 and "--model" in result.stderr and "--epochs" not in result.stderr
    assert not (tmp_path / "x.toml").exists()
    result = runner.invoke(app, ["init", "--defaults", "-o", str(tmp_path / "x.toml")])
    assert result.exit_code == 0 and tomllib.loads((tmp_path / "x.toml").read_text())["stage"] == "sft"


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    target = tmp_path / "rm.toml"
    target.write_text("mine")
    result = runner.invoke(app, ["init", "--stage", "rm", "--defaults", "-o", str(target)])
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert target.read_text() == "mine"
    result = runner.invoke(app, ["init", "--stage", "rm", "--defaults", "-o", str(target), "--force"])
    assert result.exit_code == 0 and target.read_text().startswith("# rlhfctl reward-model")


def test_flag_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", "--stage", "sft", "--defaults", "--kl-coeff", "0.1", "-o",
                                 str(tmp_path / "a.toml")])
    assert result.exit_code == 2 and "--kl-coeff only applies to --stage ppo" in result.stderr
    result = runner.invoke(app, ["init", "--stage", "rm", "--defaults", "--learning-rate", "-1", "-o",
                                 str(tmp_path / "b.toml")])
    assert result.exit_code == 2 and "training.learning_rate: must be greater than 0" in result.stderr
    assert not (tmp_path / "b.toml").exists()
    result = runner.invoke(app, ["init", "--stage", "rm", "--defaults", "--workers", "0"])
    assert result.exit_code == 2


def test_list_shows_the_templates() -> None:
    result = runner.invoke(app, ["init", "--list"], terminal_width=200, env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for stage in STAGES:
        assert f"templates/{stage}.toml" in result.stdout


def test_flags_for_another_stage_are_named_together(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", "--stage", "rm", "--defaults", "--rm-model", "r", "--max-new-tokens", "8",
                                 "-o", str(tmp_path / "rm.toml")])
    assert result.exit_code == 2
    assert "--rm-model, --max-new-tokens only apply to --stage ppo or grpo, not rm" in result.stderr
    assert not (tmp_path / "rm.toml").exists()


def test_help_lists_every_answer_flag_from_the_schema() -> None:
    from rlhfctl.config.wizard import init_flags

    result = runner.invoke(app, ["init", "--help"], terminal_width=300, env={"COLUMNS": "300"})
    assert result.exit_code == 0
    for flag in init_flags():
        assert flag.display_name in result.stdout and flag.help in result.stdout
    assert "--no-gpu" in result.stdout and "--stage" in result.stdout and "--list" in result.stdout


def test_root_help_does_not_build_the_init_options() -> None:
    """`rlhfctl --help` lists `init` without importing the config schema (pydantic) its options come from."""
    code = ("import sys\nfrom rlhfctl.cli.app import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('@@', sorted(name for name in ('pydantic', 'rlhfctl.config.schema') if name in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                               stdin=subprocess.DEVNULL)
    assert "init" in completed.stdout
    assert completed.stdout.rsplit("@@", 1)[1].strip() == "[]", completed.stdout + completed.stderr
