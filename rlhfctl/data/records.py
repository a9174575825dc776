"""The record every reader yields, in a module of its own so that :mod:`rlhfctl.data.readers` (text layouts) and
:mod:`rlhfctl.data.columnar` (Parquet, ``datasets`` folders, hub ids) share it without importing each other."""

from __future__ import annotations

from typing import NamedTuple


class SourceRecord(NamedTuple):
    """One record of an input and the 1-based line (or row) where it starts."""

    line: int
    record: object


__all__ = ["SourceRecord"]
