"""Medians, ratios, steady-state rates, MFU, and the Markdown table the harness prints."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field


@dataclass
class Row:
    """One figure of the report: rlhfctl's value next to TRL's (either may be missing) and their ratio."""

    section: str
    figure: str
    unit: str
    rlhfctl: float | None = None
    trl: float | None = None
    note: str = ""
    higher_is_better: bool = True
    samples: dict[str, list[float]] = field(default_factory=dict)  # every trial's value, per tool

    @property
    def ratio(self) -> float | None:
        """rlhfctl / TRL (``None`` when either side is missing or TRL's value is zero)."""
        return ratio(self.rlhfctl, self.trl)

    def to_json(self) -> dict:
        data = asdict(self)
        data["ratio_rlhfctl_over_trl"] = self.ratio
        return data


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not ``None``/NaN; ``None`` when there are none."""
    kept = sorted(float(value) for value in values if value is not None and not math.isnan(value))
    if not kept:
        return None
    middle = len(kept) // 2
    if len(kept) % 2:
        return kept[middle]
    return (kept[middle - 1] + kept[middle]) / 2


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when it is undefined."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def steady_state_rate(
    step_end_times_s: Sequence[float], items_per_step: Sequence[float], warmup_fraction: float = 0.1,
    min_warmup_steps: int = 2, min_span_s: float = 0.0,
) -> float | None:
    """Items per second after warm-up, from the wall-clock end time of every step.

    The first ``max(min_warmup_steps, warmup_fraction * steps)`` steps are dropped (first-call allocations, lazy
    initialisation); the rate is the items of the remaining steps over the time from the end of the last warm-up
    step to the end of the last step. ``None`` when fewer than two steps remain or the timed span is shorter
    than ``min_span_s`` (for times with a coarse resolution, such as the arrival of a metrics line).
    """
    if len(step_end_times_s) != len(items_per_step):
        raise ValueError("step_end_times_s and items_per_step must have the same length")
    steps = len(step_end_times_s)
    warmup = max(min_warmup_steps, int(warmup_fraction * steps))
    if steps - warmup < 2:
        return None
    elapsed_s = step_end_times_s[-1] - step_end_times_s[warmup - 1]
    if elapsed_s <= 0 or elapsed_s < min_span_s:
        return None
    return sum(items_per_step[warmup:]) / elapsed_s


STALL_FACTOR = 3.0  # a timed step this many times the median step is a stall of the machine, not the tool's work


def rate_without_stalls(
    step_end_times_s: Sequence[float], items_per_step: Sequence[float], stall_factor: float = STALL_FACTOR,
    warmup_fraction: float = 0.1, min_warmup_steps: int = 2,
) -> tuple[float | None, int]:
    """Items per second over the timed steps (the same warm-up as :func:`steady_state_rate`) leaving out stalls:
    steps longer than ``stall_factor`` x the median timed step; returns ``(rate, stalled steps)``.

    For a benchmark of ~0.1-0.2 s steps on a shared VM: a multi-second pause of the whole process in one step
    (grpo5's TRL run: two steps of 1.45 and 4.61 s among steps of ~0.2 s) halves a span-based rate while saying
    nothing about the tool. A tool's own periodic work (a collector pass, a log every N steps) stays counted as
    long as it takes less than ``stall_factor`` x its median step; both tools are treated alike.
    """
    if len(step_end_times_s) != len(items_per_step):
        raise ValueError("step_end_times_s and items_per_step must have the same length")
    warmup = max(min_warmup_steps, int(warmup_fraction * len(step_end_times_s)))
    if len(step_end_times_s) - warmup < 2:
        return None, 0
    durations = [end - start for start, end in zip(step_end_times_s[warmup - 1:], step_end_times_s[warmup:])]
    limit = stall_factor * (median(durations) or 0.0)
    kept = [(duration, items) for duration, items in zip(durations, items_per_step[warmup:]) if duration <= limit]
    elapsed_s = sum(duration for duration, _ in kept)
    if elapsed_s <= 0:
        return None, len(durations) - len(kept)
    return sum(items for _, items in kept) / elapsed_s, len(durations) - len(kept)


def mfu(flops_per_second: float | None, peak_flops_per_second: float | None) -> float | None:
    """Model-FLOPs utilisation: achieved model FLOP/s over the measured matmul peak (a fraction, not percent)."""
    return ratio(flops_per_second, peak_flops_per_second)


def training_flops(parameters: int, tokens: float) -> float:
    """FLOPs of a training pass over ``tokens`` tokens: 6 x parameters x tokens (forward 2, backward 4)."""
    return 6.0 * parameters * tokens


def forward_flops(parameters: int, tokens: float) -> float:
    """FLOPs of a forward-only pass (generation, scoring): 2 x parameters x tokens."""
    return 2.0 * parameters * tokens


def format_value(value: float | None, unit: str = "") -> str:
    """A compact human-readable number: ``n/a`` for missing, 3 significant digits otherwise."""
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{value * 100:.1f} %"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def markdown_table(rows: Sequence[Row]) -> str:
    """The report as a GitHub Markdown table: section, figure, unit, rlhfctl, TRL, rlhfctl/TRL, note."""
    header = ["section", "figure", "unit", "rlhfctl", "TRL", "rlhfctl/TRL", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 3 + ["---"]) + "|"]
    for row in rows:
        unit = "%" if row.unit == "%" else row.unit
        cells = [
            row.section,
            row.figure,
            unit,
            format_value(row.rlhfctl, row.unit),
            format_value(row.trl, row.unit),
            format_ratio(row.ratio),
            row.note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
