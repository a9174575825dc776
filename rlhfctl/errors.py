"""Error types shared by every layer.

The CLI maps them to exit codes: :class:`UserError` (and its subclasses) -> 2, anything else -> 1.
Messages are complete sentences written for the person at the terminal: they name the file, the line
and the key where known, what was expected and what was found. Core code raises these; only the CLI
prints them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class RlhfctlError(Exception):
    """Base class of every error rlhfctl raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first non-blank line, cut to ``limit`` characters ("..." marks a cut): for messages that quote a
    library's or a worker's error in one line."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UserError(RlhfctlError):
    """The user's input is wrong (config, data, flags, paths). Exit code 2."""

    exit_code = 2


class RuntimeFailure(RlhfctlError):
    """Something failed while running (a worker died, NaN loss, disk full). Exit code 1."""

    exit_code = 1


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a config file."""

    key: str  # dotted key, e.g. "training.learning_rate" ("" for the whole file)
    message: str  # what is wrong and what was expected
    value: object = None  # the value found (None when the key is missing)
    line: int | None = None  # 1-based line in the config file, when known

    def render(self, path: Path | str | None = None) -> str:
        where = ""
        if path is not None:
            where = f"{path}:{self.line}: " if self.line else f"{path}: "
        elif self.line:
            where = f"line {self.line}: "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class ConfigError(UserError):
    """One or more problems in a config file, all collected before failing once."""

    def __init__(self, issues: list[ConfigIssue], path: Path | str | None = None) -> None:
        self.issues = list(issues)
        self.path = path
        count = len(self.issues)
        head = f"{path}: " if path else ""
        lines = [f"{head}{count} problem{'s' if count != 1 else ''} in the config:"]
        lines += [f"  - {issue.render(path)}" for issue in self.issues]
        super().__init__("\n".join(lines))


class DataError(UserError):
    """A data file cannot be read or has rows that do not fit the expected format."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.key = key
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line else f"{path}: "
        key_part = f"key '{key}': " if key else ""
        super().__init__(f"{where}{key_part}{message}", hint=hint)
