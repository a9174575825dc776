"""Everything under examples/ is used: the configs validate standalone, the README's paths and commands are real,
and every file is exercised by some test."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from rlhfctl.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
README = EXAMPLES / "README.md"


@pytest.mark.parametrize("stage", ["sft", "rm", "ppo"])
def test_configs_validate_and_point_into_example_run(stage):
    config = load_config(EXAMPLES / "configs" / f"{stage}.toml", check_files=False)
    assert config.stage == stage
    assert config.general.output_dir == REPO_ROOT / "example-run" / "runs" / stage
    assert config.general.checkpoint_dir == REPO_ROOT / "example-run" / "models" / stage
    assert Path(config.dataset.train_file) == EXAMPLES / "data" / f"{stage}.jsonl"
    assert config.training.num_training_workers == "auto"


def test_ppo_config_chains_the_sft_and_rm_exports():
    sft = load_config(EXAMPLES / "configs" / "sft.toml", check_files=False)
    rm = load_config(EXAMPLES / "configs" / "rm.toml", check_files=False)
    ppo = load_config(EXAMPLES / "configs" / "ppo.toml", check_files=False)
    assert ppo.general.model_pretrain == sft.general.checkpoint_dir
    assert ppo.general.rm_pretrain == rm.general.checkpoint_dir
    assert Path(ppo.dataset.validation_file) == EXAMPLES / "data" / "heldout_prompts.jsonl"


@pytest.mark.parametrize(("stage", "data"), [("dpo", "rm"), ("grpo", "ppo")])
def test_dpo_and_grpo_configs_start_from_the_sft_export(stage, data):
    """dpo.toml learns from rm.toml's pairs, grpo.toml from ppo.toml's prompts scored by the RM export."""
    config = load_config(EXAMPLES / "configs" / f"{stage}.toml", check_files=False)
    sft = load_config(EXAMPLES / "configs" / "sft.toml", check_files=False)
    assert config.stage == stage and config.training.num_training_workers == "auto"
    assert config.general.output_dir == REPO_ROOT / "example-run" / "runs" / stage
    assert config.general.checkpoint_dir == REPO_ROOT / "example-run" / "models" / stage
    assert Path(config.dataset.train_file) == EXAMPLES / "data" / f"{data}.jsonl"
    if stage == "dpo":
        assert Path(config.general.base_model) == sft.general.checkpoint_dir and config.reference_is_policy
    else:
        rm = load_config(EXAMPLES / "configs" / "rm.toml", check_files=False)
        assert config.general.model_pretrain == sft.general.checkpoint_dir
        assert config.general.rm_pretrain == rm.general.checkpoint_dir and config.uses_reward_model
        assert [function.name for function in config.reward.functions] == ["contains"]


def test_readme_names_only_files_that_exist():
    text = README.read_text(encoding="utf-8")
    for relative in set(re.findall(r"examples/[\w./\-]+\.(?:toml|jsonl|json|py)", text)):
        assert (REPO_ROOT / relative).is_file(), relative
    for name in re.findall(r"`((?:configs|data)/[\w./\-]+\.(?:toml|jsonl|json|py))`", text):
        assert (EXAMPLES / name).is_file(), name


def test_readme_commands_are_real_rlhfctl_commands():
    from typer.testing import CliRunner

    from rlhfctl.cli.app import app

    text = README.read_text(encoding="utf-8")
    commands = [line.split("#")[0].strip() for line in re.findall(r"^rlhfctl [^\n]+", text, flags=re.M)]
    assert len(commands) >= 6
    runner = CliRunner()
    for command in commands:
        words = shlex.split(command)[1:]
        group_and_command = [word for word in words[:2] if not word.startswith("-")]
        result = runner.invoke(app, [*group_and_command, "--help"])
        assert result.exit_code == 0, f"{command}: {result.output}"


def test_every_file_under_examples_is_exercised_by_a_test():
    tests_text = "\n".join(path.read_text(encoding="utf-8") for path in (REPO_ROOT / "tests").rglob("*.py"))
    for path in sorted(EXAMPLES.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            assert path.name in tests_text, f"no test mentions {path.relative_to(REPO_ROOT)}"
