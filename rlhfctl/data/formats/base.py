"""What a source format is, what a skipped row is, and the checks every preference format shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

TARGETS: tuple[str, ...] = ("rm", "ppo", "sft")

SKIP_REASONS: dict[str, str] = {
    "missing-field": "a field the format needs is missing or null",
    "wrong-type": "a field has the wrong type (e.g. a number where text is expected)",
    "empty-prompt": "the prompt is empty",
    "empty-response": "a response is empty or only whitespace",
    "identical-pair": "chosen and rejected are the same text",
    "prompt-mismatch": "chosen and rejected continue different conversations",
    "no-assistant-turn": "no assistant turn to split the prompt from the response",
    "not-a-pair": "the row holds no preference pair (e.g. fewer than two ranked replies)",
    "low-score-ratio": "the preference is weaker than --min-score-ratio",
    "duplicate": "the same output row was already written (--dedupe)",
}


class Skip(NamedTuple):
    """A row that cannot be converted, with a reason from :data:`SKIP_REASONS` and a short detail."""

    reason: str
    detail: str = ""


Row = dict
Converted = list  # list[Row | Skip]: one input record may give several rows (e.g. OpenAssistant trees)


@dataclass(frozen=True)
class ConvertOptions:
    """Format-specific choices from the command line."""

    preference: str = "better"  # PKU-SafeRLHF: which label decides chosen/rejected ("better" or "safer")
    min_score_ratio: float | None = None  # SHP: keep pairs whose score_A/score_B ratio (either way) is at least this


@dataclass(frozen=True)
class SourceFormat:
    """One family of input rows and how it converts to each standard target it supports."""

    name: str
    summary: str  # one line for `rlhfctl data formats`
    keys: tuple[str, ...]  # the keys that identify it (for "closest formats" in detection errors)
    matches: Callable[[object], bool]  # does this record look like the format?
    converters: dict[str, Callable[[object, ConvertOptions], Converted]]  # target -> converter

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(target for target in TARGETS if target in self.converters)

    def closeness(self, record: object) -> float:
        """Fraction of the identifying keys present in ``record`` (0 for non-objects)."""
        if not isinstance(record, dict) or not self.keys:
            return 0.0
        return sum(key in record for key in self.keys) / len(self.keys)


# ----------------------------------------------------------------------------------------------- shared checks


def text_field(record: dict, key: str) -> str | Skip:
    """``record[key]`` as text, or the Skip that explains why it is not."""
    value = record.get(key)
    if value is None:
        return Skip("missing-field", key)
    if not isinstance(value, str):
        return Skip("wrong-type", f"{key} is {type(value).__name__}")
    return value


def check_prompt(prompt: object) -> Skip | None:
    if isinstance(prompt, str) and not prompt.strip():
        return Skip("empty-prompt")
    return None


def preference_row(prompt: str | list, chosen: str, rejected: str) -> list:
    """The standard RM row, or the skip for an empty response or an identical pair."""
    if not chosen.strip() or not rejected.strip():
        return [Skip("empty-response", "chosen" if not chosen.strip() else "rejected")]
    if chosen == rejected:
        return [Skip("identical-pair")]
    empty = check_prompt(prompt)
    if empty:
        return [empty]
    return [{"instruction": prompt, "chosen": chosen, "rejected": rejected}]


def prompt_row(prompt: str | list) -> list:
    empty = check_prompt(prompt)
    return [empty] if empty else [{"prompt": prompt}]


def sft_row(instruction: str | list, response: str) -> list:
    """The standard SFT row: ``{"instruction", "response"}`` (the instruction may be a message list)."""
    if not response.strip():
        return [Skip("empty-response", "response")]
    empty = check_prompt(instruction)
    if empty:
        return [empty]
    return [{"instruction": instruction, "response": response}]


def has_keys(record: object, *keys: str) -> bool:
    return isinstance(record, dict) and all(key in record for key in keys)
