"""``rlhfctl data inspect``: what a data file holds, before converting or training on it.

Layout and detected format, row count, per-field lengths (characters, and tokens with a tokenizer, with how many
rows exceed ``max_length``), duplicate rows, identical pairs, empty fields and a few example rows. One streaming
pass; only per-row lengths (a few bytes each) are kept.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import statistics
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfctl.data.formats import detect_format
from rlhfctl.data.readers import detect_layout, iter_records
from rlhfctl.errors import DataError, UserError

PAIR_KEYS: tuple[tuple[str, str], ...] = (
    ("chosen", "rejected"), ("response_0", "response_1"), ("human_ref_A", "human_ref_B"),
)
BARE_STRING_FIELD = "(text)"


@dataclass(frozen=True)
class LengthStats:
    """Length distribution of one field (characters or tokens)."""

    count: int
    mean: float
    median: float
    p95: float
    max: int

    @classmethod
    def of(cls, lengths: array) -> "LengthStats":
        ordered = sorted(lengths)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        return cls(len(ordered), statistics.fmean(ordered), statistics.median(ordered), p95, ordered[-1])


@dataclass
class InspectReport:
    path: str
    layout: str
    source_format: str | None
    rows: int = 0
    char_lengths: dict[str, LengthStats] = field(default_factory=dict)
    token_lengths: dict[str, LengthStats] = field(default_factory=dict)
    max_length: int | None = None
    rows_over_max_length: int | None = None
    duplicate_rows: int = 0
    identical_pairs: int = 0
    empty_fields: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[int, Any]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "path": self.path, "layout": self.layout, "format": self.source_format, "rows": self.rows,
            "char_lengths": {key: vars(stats) for key, stats in self.char_lengths.items()},
            "token_lengths": {key: vars(stats) for key, stats in self.token_lengths.items()},
            "max_length": self.max_length, "rows_over_max_length": self.rows_over_max_length,
            "duplicate_rows": self.duplicate_rows, "identical_pairs": self.identical_pairs,
            "empty_fields": self.empty_fields,
            "examples": [{"line": line, "record": record} for line, record in self.examples],
        }


def field_texts(record: object) -> dict[str, str]:
    """Each top-level text field of a record; message lists count as the text of their contents."""
    if isinstance(record, str):
        return {BARE_STRING_FIELD: record}
    if not isinstance(record, dict):
        return {}
    texts = {}
    for key, value in record.items():
        if isinstance(value, str):
            texts[key] = value
        elif isinstance(value, list) and all(isinstance(item, dict) for item in value):
            texts[key] = "".join(str(item.get("content", item.get("value", ""))) for item in value)
        elif isinstance(value, dict) and isinstance(value.get("value", value.get("content")), str):
            texts[key] = value.get("value", value.get("content"))
    return texts


def load_tokenizer(name_or_path: str):
    """A tokenizer from a local folder or hub id (no remote code); a clear UserError when it cannot load."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except Exception as exc:
        raise UserError(
            f"cannot load the tokenizer {name_or_path!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
            hint="Give a local model folder; hub ids need internet access.",
        ) from exc


def inspect_file(source: str | Path, *, tokenizer: Any = None, max_length: int | None = None,
                 example_count: int = 3) -> InspectReport:
    """One pass over ``source``: counts and length statistics (see the module docstring)."""
    layout = detect_layout(source)
    sample = [record for _, record in itertools.islice(iter_records(source, layout), 100)]
    detection = detect_format(sample)
    report = InspectReport(
        path=str(source), layout=layout,
        source_format=detection.source_format.name if detection.source_format else None,
        max_length=max_length if tokenizer is not None else None,
    )
    char_lengths: dict[str, array] = {}
    token_lengths: dict[str, array] = {}
    seen: set[bytes] = set()
    over_max = 0
    for line, record in iter_records(source, layout):
        report.rows += 1
        if len(report.examples) < example_count:
            report.examples.append((line, record))
        digest = hashlib.blake2b(json.dumps(record, sort_keys=True, default=str).encode("utf-8"),
                                 digest_size=16).digest()
        if digest in seen:
            report.duplicate_rows += 1
        seen.add(digest)
        if isinstance(record, dict) and any(
            isinstance(record.get(a), str) and record.get(a) == record.get(b) for a, b in PAIR_KEYS
        ):
            report.identical_pairs += 1
        texts = field_texts(record)
        row_tokens: dict[str, int] = {}
        for key, text in texts.items():
            char_lengths.setdefault(key, array("I")).append(len(text))
            if not text.strip():
                report.empty_fields[key] = report.empty_fields.get(key, 0) + 1
            if tokenizer is not None:
                row_tokens[key] = len(tokenizer(text, add_special_tokens=False)["input_ids"])
                token_lengths.setdefault(key, array("I")).append(row_tokens[key])
        if tokenizer is not None and max_length is not None and _longest_sequence(row_tokens) > max_length:
            over_max += 1
    if report.rows == 0:
        raise DataError("the file has no records", path=source)
    report.char_lengths = {key: LengthStats.of(values) for key, values in char_lengths.items()}
    report.token_lengths = {key: LengthStats.of(values) for key, values in token_lengths.items()}
    if tokenizer is not None and max_length is not None:
        report.rows_over_max_length = over_max
    return report


def _longest_sequence(row_tokens: dict[str, int]) -> int:
    """Tokens of the longest training sequence a row makes: every field, but only the longer of a pair."""
    total = sum(row_tokens.values())
    for first, second in PAIR_KEYS:
        if first in row_tokens and second in row_tokens:
            total -= min(row_tokens[first], row_tokens[second])
    return total
