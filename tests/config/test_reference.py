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
    """Each stage's own keys in its part; the sections every stage shares (``[monitor]``) once, at the end."""
    text = render_reference()
    shared = text.split("## `[monitor]` (every stage)")[1]
    for stage in STAGES:
        section = text.split(f"## `{stage}` stage")[1].split("\n## ")[0]
        assert "The same in every stage: see [`[monitor]` (every stage)](#monitor-every-stage)." in section
        for key in known_keys(stage):
            if key == "stage":
                continue
            where = shared if key.startswith("monitor.") else section
            (row,) = [line for line in where.splitlines() if line.startswith(f"| `{key}` |")]
            cells = [cell.strip() for cell in row.strip("|").split(" | ")]
            assert len(cells) == 4 and all(cells), row
    assert "| `training.learning_rate` | number | `1e-05` |" in text
    assert "| `general.base_model` | string | **required** |" in text
