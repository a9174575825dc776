"""docs/config-reference.md is generated from the schema and lists every key of every stage."""

from __future__ import annotations

from pathlib import Path

from rlhfctl.config.loader import known_keys
from rlhfctl.config.reference import render_reference
from rlhfctl.config.schema import STAGES

DOC = Path(__file__).resolve().parents[2] / "docs" / "config-reference.md"


def test_reference_document_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == render_reference(), (
        "docs/config-reference.md is stale: run python -m rlhfctl.config.reference > docs/config-reference.md")


def test_every_schema_key_is_documented_with_type_default_and_meaning() -> None:
    text = render_reference()
    for stage in STAGES:
        section = text.split(f"## `{stage}` stage")[1].split("\n## ")[0]
        for key in known_keys(stage):
            if key == "stage":
                continue
            (row,) = [line for line in section.splitlines() if line.startswith(f"| `{key}` |")]
            cells = [cell.strip() for cell in row.strip("|").split(" | ")]
            assert len(cells) == 4 and all(cells), row
    assert "| `training.learning_rate` | number | `1e-05` |" in text
    assert "| `general.base_model` | string | **required** |" in text
