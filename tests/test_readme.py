"""The README's config examples are valid configs of their stage (as a reader would copy them)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from rlhfctl.config.loader import validate_config_dict

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = [tomllib.loads(block) for block in
          re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)]
CONFIGS = [block for block in BLOCKS if "stage" in block]  # whole configs
FRAGMENTS = [block for block in BLOCKS if "stage" not in block]  # a section or two to add to a config


def test_the_readme_shows_a_config_of_every_trained_stage_it_describes():
    assert {"rm", "dpo", "grpo"} <= {block["stage"] for block in CONFIGS}


@pytest.mark.parametrize("data", CONFIGS, ids=lambda data: data["stage"])
def test_each_toml_config_validates(data):
    config = validate_config_dict(data, check_files=False)
    assert config.stage == data["stage"]


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda fragment: "+".join(fragment))
def test_each_toml_fragment_validates_inside_a_config(fragment):
    stage = "grpo" if "generation" in fragment else "rm"  # [generation] is PPO's and GRPO's
    base = next(block for block in CONFIGS if block["stage"] == stage)
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for section, keys in fragment.items():
        merged[section] = {**merged.get(section, {}), **keys}
    validate_config_dict(merged, check_files=False)
