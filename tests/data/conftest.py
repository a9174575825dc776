"""Fixtures shared by the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def pandas_rm_rows() -> list[dict]:
    """Two RM rows with a comma, quotes and newlines in their text."""
    return [
        {"instruction": "\n\nHuman: Hi, there\n\nAssistant:", "chosen": " Hello!", "rejected": " Go away."},
        {"instruction": "\n\nHuman: Tea?\n\nAssistant:", "chosen": ' Yes, "please".', "rejected": " No."},
    ]


@pytest.fixture
def pandas_rm_csv(tmp_path, pandas_rm_rows) -> Path:
    """``pandas_rm_rows`` saved with pandas' defaults: ``DataFrame.to_csv`` writes the unnamed index first, under
    an empty header (``,instruction,chosen,rejected``). The index (3, 7) is what a user holds after filtering."""
    import pandas  # a dependency of datasets

    path = tmp_path / "rm_pandas.csv"
    pandas.DataFrame(pandas_rm_rows, index=[3, 7]).to_csv(path)
    assert path.read_text(encoding="utf-8").startswith(",instruction,chosen,rejected\n")
    return path
