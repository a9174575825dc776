"""``[lora]`` (optional: present = on) and ``training.gradient_checkpointing``, in files and on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhfctl.config.loader import load_config
from rlhfctl.config.schema import CONFIG_CLASSES, STAGES
from rlhfctl.errors import ConfigError

RM = """\
stage = "rm"

[general]
base_model = "openai-community/gpt2"
output_dir = "runs/rm"
checkpoint_dir = "checkpoints/rm"

[dataset]
train_file = "rm.jsonl"
"""


@pytest.fixture
def rm_toml(tmp_path: Path) -> Path:
    (tmp_path / "rm.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    (tmp_path / "rm.toml").write_text(RM)
    return tmp_path / "rm.toml"


def _issues(path: Path, overrides=()) -> dict[str, tuple[str, int | None]]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=list(overrides))
    return {issue.key: (issue.message, issue.line) for issue in info.value.issues}


def test_no_section_means_no_lora_and_no_checkpointing(rm_toml: Path) -> None:
    config = load_config(rm_toml)
    assert config.lora is None
    assert config.training.gradient_checkpointing is False


def test_an_empty_section_turns_lora_on_with_the_defaults(rm_toml: Path) -> None:
    rm_toml.write_text(RM + "\n[lora]\n")
    lora = load_config(rm_toml).lora
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules, lora.merge_on_export) == (
        8, 16.0, 0.0, "all-linear", True)
    assert lora.target_names is None


def test_a_command_line_key_creates_the_section(rm_toml: Path) -> None:
    config = load_config(rm_toml, overrides=["lora.r=4", "training.gradient_checkpointing=true"])
    assert config.lora is not None and config.lora.r == 4 and config.lora.alpha == 16.0
    assert config.training.gradient_checkpointing is True
    listed = load_config(rm_toml, overrides=['lora.target_modules=["q_proj", "v_proj"]']).lora
    assert listed.target_names == ["q_proj", "v_proj"]


@pytest.mark.parametrize("text, key, words", [
    ("r = 0", "lora.r", "greater than 0"),
    ("alpha = -1", "lora.alpha", "greater than 0"),
    ("dropout = 1.0", "lora.dropout", "less than 1"),
    ("target_modules = []", "lora.target_modules", "non-empty list"),
    ('target_modules = ["q_proj", "q_proj"]', "lora.target_modules", "more than once"),
    ("merge_on_export = 1", "lora.merge_on_export", "expected true or false"),
    ("alpah = 32", "lora.alpah", "did you mean 'lora.alpha'"),
])
def test_bad_values_name_the_key_and_line(rm_toml: Path, text: str, key: str, words: str) -> None:
    rm_toml.write_text(RM + f"\n[lora]\n{text}\n")
    issues = _issues(rm_toml)
    assert key in issues and words in issues[key][0], issues
    assert issues[key][1] == RM.count("\n") + 3  # the line of the bad key


def test_a_bad_override_is_reported_as_such(rm_toml: Path) -> None:
    issues = _issues(rm_toml, ["lora.r=0"])
    assert "lora.r" in issues and "greater than 0" in issues["lora.r"][0]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_takes_the_optional_section_after_its_own_and_before_the_shared(stage: str) -> None:
    model_cls = CONFIG_CLASSES[stage]
    assert list(model_cls.sections())[-2:] == ["lora", "monitor"]
    assert model_cls.optional_sections() == ("lora",)
