"""Source formats ``rlhfctl data convert`` understands, and detection of the one a file uses.

Formats are tried most specific first; detection counts, over the first records, how many each format matches
and keeps the best (ties go to the earlier, more specific format).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rlhfctl.data.formats.base import (
    SKIP_REASONS,
    TARGETS,
    ConvertOptions,
    Skip,
    SourceFormat,
)
from rlhfctl.data.formats.chat_pairs import ORCA_DPO, SHAREGPT_PREFERENCE, TRL
from rlhfctl.data.formats.instruction import ALPACA, DOLLY, MESSAGES, PROMPT_ONLY, SHAREGPT
from rlhfctl.data.formats.oasst import OASST
from rlhfctl.data.formats.preference import HH_RLHF, PKU_SAFE_RLHF, SHP, STANDARD

FORMATS: tuple[SourceFormat, ...] = (
    OASST,
    SHAREGPT_PREFERENCE,
    SHAREGPT,
    MESSAGES,
    SHP,
    PKU_SAFE_RLHF,
    ORCA_DPO,
    TRL,
    ALPACA,
    DOLLY,
    HH_RLHF,
    STANDARD,
    PROMPT_ONLY,
)
FORMATS_BY_NAME: dict[str, SourceFormat] = {source_format.name: source_format for source_format in FORMATS}


@dataclass(frozen=True)
class Detection:
    """The outcome of format detection over a sample of records."""

    source_format: SourceFormat | None  # None: nothing matched
    matched: int  # sample records the chosen format matches
    sampled: int
    closest: tuple[tuple[str, float], ...]  # (format name, closeness 0..1), best first, when nothing matched


def get_format(name: str) -> SourceFormat:
    """The format called ``name`` (KeyError when unknown)."""
    return FORMATS_BY_NAME[name]


def detect_format(records: Iterable[object]) -> Detection:
    """Pick the format that matches most of ``records`` (among equals, the earlier, more specific one)."""
    sample = list(records)
    best: tuple[int, int] | None = None
    chosen: SourceFormat | None = None
    for order, source_format in enumerate(FORMATS):
        matched = sum(1 for record in sample if source_format.matches(record))
        if not matched:
            continue
        rank = (matched, -order)
        if best is None or rank > best:
            best, chosen = rank, source_format
    if chosen is not None:
        return Detection(chosen, best[0], len(sample), ())
    closeness = {
        source_format.name: max((source_format.closeness(record) for record in sample), default=0.0)
        for source_format in FORMATS
    }
    closest = tuple(sorted(((name, score) for name, score in closeness.items() if score > 0),
                           key=lambda item: -item[1])[:3])
    return Detection(None, 0, len(sample), closest)


__all__ = [
    "FORMATS",
    "FORMATS_BY_NAME",
    "SKIP_REASONS",
    "TARGETS",
    "ConvertOptions",
    "Detection",
    "Skip",
    "SourceFormat",
    "detect_format",
    "get_format",
]
