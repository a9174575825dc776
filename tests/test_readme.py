"""The README's config examples are valid configs of their stage (as a reader would copy them)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from rlhfctl.config.loader import validate_config_dict

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_shows_a_config_of_every_trained_stage_it_describes():
    stages = [tomllib.loads(block)["stage"] for block in BLOCKS]
    assert {"rm", "dpo", "grpo"} <= set(stages)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: tomllib.loads(block)["stage"])
def test_each_toml_block_validates(block):
    data = tomllib.loads(block)
    config = validate_config_dict(data, check_files=False)
    assert config.stage == data["stage"]
