"""The conversion report: what was detected, how many rows went in and out, and every skip with its reason."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rlhfctl.data.formats.base import SKIP_REASONS
from rlhfctl.fileio import atomic_write_text

FIRST_LINES_KEPT = 5


@dataclass
class SkipTally:
    """How often one skip reason occurred, the first input lines it hit and one example detail."""

    count: int = 0
    first_lines: list[int] = field(default_factory=list)
    example: str = ""

    def add(self, line: int, detail: str) -> None:
        self.count += 1
        if len(self.first_lines) < FIRST_LINES_KEPT and (not self.first_lines or self.first_lines[-1] != line):
            self.first_lines.append(line)
        if not self.example and detail:
            self.example = detail


@dataclass
class ConvertReport:
    """Everything ``rlhfctl data convert`` decided, for the summary table and ``--report``."""

    input: str
    output: str
    target: str
    source_format: str
    format_detected: bool  # True: auto-detected; False: forced with --from
    layout: str
    validation_output: str | None = None
    rows_read: int = 0
    rows_written: int = 0  # train + validation
    validation_rows: int = 0
    skipped: dict[str, SkipTally] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rows_skipped(self) -> int:
        return sum(tally.count for tally in self.skipped.values())

    @property
    def train_rows(self) -> int:
        return self.rows_written - self.validation_rows

    def skip(self, reason: str, line: int, detail: str = "") -> None:
        self.skipped.setdefault(reason, SkipTally()).add(line, detail)

    def to_dict(self) -> dict:
        return {
            "input": self.input,
            "output": self.output,
            "validation_output": self.validation_output,
            "target": self.target,
            "format": self.source_format,
            "format_detected": self.format_detected,
            "layout": self.layout,
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "train_rows": self.train_rows,
            "validation_rows": self.validation_rows,
            "rows_skipped": self.rows_skipped,
            "skipped": {
                reason: {"count": tally.count, "first_lines": tally.first_lines, "example": tally.example,
                         "meaning": SKIP_REASONS.get(reason, "")}
                for reason, tally in sorted(self.skipped.items(), key=lambda item: -item[1].count)
            },
            "fields": self.fields,
            "seconds": round(self.seconds, 3),
        }

    def skip_summary(self) -> str:
        """``"missing-field: 3, identical-pair: 1"`` (most frequent first)."""
        ordered = sorted(self.skipped.items(), key=lambda item: -item[1].count)
        return ", ".join(f"{reason}: {tally.count}" for reason, tally in ordered)

    def to_text(self) -> str:
        """The plain-text summary (used when stdout is not a terminal)."""
        how = "detected" if self.format_detected else "given with --from"
        lines = [
            f"input:   {self.input} ({self.layout}, format {self.source_format}, {how})",
            f"output:  {self.output} ({self.train_rows} {self.target} rows)",
        ]
        if self.validation_output:
            lines.append(f"validation: {self.validation_output} ({self.validation_rows} rows)")
        lines.append(f"rows read {self.rows_read}, written {self.rows_written}, skipped {self.rows_skipped}")
        for reason, tally in sorted(self.skipped.items(), key=lambda item: -item[1].count):
            first = ", ".join(str(line) for line in tally.first_lines)
            example = f" ({tally.example})" if tally.example else ""
            lines.append(f"  skipped {reason}: {tally.count} (first lines: {first}){example}")
        return "\n".join(lines)


def write_report(report: ConvertReport, path: Path) -> None:
    """Write the report as JSON, atomically."""
    atomic_write_text(Path(path), json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
