"""Pure data shaping for the report: metric discovery and grouping, series, decimation, throughput, frontier.

No plotting library here: the HTML page, the PNG images and the terminal summary all draw from these values.
Metrics are discovered from whatever keys ``metrics.jsonl`` holds; known names are grouped into panels by the
patterns in :data:`GROUPS`, anything else lands in "Other", so a new stage's metrics get plots without code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rlhfctl.monitor.checks import KL_KEYS, REWARD_KEYS
from rlhfctl.monitor.monitor import NOT_METRICS


@dataclass(frozen=True)
class Group:
    """A panel of related metrics: ``pattern`` is searched in the lower-cased metric name."""

    name: str
    title: str
    pattern: re.Pattern[str]


def _group(name: str, title: str, pattern: str) -> Group:
    return Group(name, title, re.compile(pattern))


# First match wins (``value_loss`` is a loss, ``time_score_s`` is a time, ``kl_coef`` belongs with KL).
GROUPS: tuple[Group, ...] = (
    _group("loss", "Loss", r"loss|perplexity"),
    _group("length_bias", "Reward-model length bias", r"length_bias|longer_wins"),
    _group("accuracy", "Accuracy", r"accurac|(^|[/_])acc($|[/_])|win_rate"),
    _group("throughput", "Throughput", r"_per_s($|[/_ ])|per_second|throughput"),
    _group("timing", "Time per step", r"^time_|_s$|_seconds$"),
    _group("kl", "KL divergence", r"(^|[/_])kl($|[/_\d])"),
    _group("reward", "Reward and score", r"reward|score|margin|advantage|return"),
    _group("entropy", "Entropy", r"entropy"),
    _group("length", "Response length", r"length|eos_rate"),
    _group("learning_rate", "Learning rate", r"(^|[/_])lr($|[/_])|learning_rate"),
    _group("gradients", "Gradients", r"grad"),
    _group("clipping", "Clipping and ratios", r"clip|ratio"),
    _group("value", "Value function", r"explained_variance|value"),
    _group("other", "Other", r""),
)
GROUP_TITLES = {group.name: group.title for group in GROUPS}
DISPLAY_ORDER = ("loss", "accuracy", "reward", "kl", "entropy", "length", "length_bias", "learning_rate",
                 "throughput", "timing", "gradients", "clipping", "value", "other")  # the panels, top to bottom

STEPS_PER_S = "steps_per_s (from log times)"  # derived by `throughput`, named apart from any logged metric
SAMPLES_PER_S = "samples_per_s (from log times)"


def group_of(key: str) -> str:
    lowered = key.lower()
    return next(group.name for group in GROUPS if group.pattern.search(lowered))


def metric_keys(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Every metric name in ``rows`` in first-seen order (bookkeeping fields left out)."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in NOT_METRICS:
                seen.setdefault(key, None)
    return list(seen)


def grouped_keys(keys: Iterable[str]) -> list[tuple[str, list[str]]]:
    """``[(group name, keys)]`` in :data:`DISPLAY_ORDER`, empty groups left out, keys in the given order."""
    by_group: dict[str, list[str]] = {}
    for key in keys:
        by_group.setdefault(group_of(key), []).append(key)
    return [(name, by_group[name]) for name in DISPLAY_ORDER if name in by_group]


@dataclass(frozen=True)
class Series:
    """One metric of one split over steps; ``None`` values are NaN/inf (drawn as gaps)."""

    key: str
    split: str
    steps: list[int]
    values: list[float | None]

    def finite_values(self) -> list[float]:
        return [value for value in self.values if value is not None]


def series(rows: Sequence[dict[str, Any]], key: str, split: str) -> Series:
    """The rows that have ``key`` (rows of one split, in logged order)."""
    present = [row for row in rows if key in row]
    return Series(key, split, [row["step"] for row in present], [row[key] for row in present])


def decimate(line: Series, max_points: int) -> Series:
    """At most about ``max_points`` points that keep the shape: per bucket its first point, minimum, maximum and
    first gap (NaN/inf), so spikes survive. Series that already fit are returned as they are."""
    count = len(line.steps)
    if count <= max_points:
        return line
    buckets = max(1, max_points // 3)
    size = math.ceil(count / buckets)
    keep: set[int] = {count - 1}
    for start in range(0, count, size):
        indices = range(start, min(start + size, count))
        keep.add(start)
        finite = [index for index in indices if line.values[index] is not None]
        if finite:
            keep.add(min(finite, key=lambda index: line.values[index]))  # type: ignore[arg-type, return-value]
            keep.add(max(finite, key=lambda index: line.values[index]))  # type: ignore[arg-type, return-value]
        gap = next((index for index in indices if line.values[index] is None), None)
        if gap is not None:
            keep.add(gap)
    chosen = sorted(keep)
    return Series(line.key, line.split, [line.steps[i] for i in chosen], [line.values[i] for i in chosen])


def throughput(train_rows: Sequence[dict[str, Any]], samples_per_step: int | None,
               restart_steps: Iterable[int] = ()) -> list[Series]:
    """Steps/s (and samples/s when ``samples_per_step`` is known) from the ``time`` each train step was logged.

    Rates are taken over windows of ``window`` logged steps (1 % of the run, 1 to 50) to smooth the clock's
    jitter; a window that spans a restart from a checkpoint (``restart_steps``) or a clock going backwards is
    left out, since its time includes the restart rather than training.
    """
    timed = [(row["step"], row["time"]) for row in train_rows if isinstance(row.get("time"), (int, float))]
    restarts = sorted(set(restart_steps))
    window = max(1, min(50, len(timed) // 100))
    steps: list[int] = []
    rates: list[float | None] = []
    for index in range(window, len(timed)):
        (first_step, first_time), (last_step, last_time) = timed[index - window], timed[index]
        spans_restart = any(first_step <= restart < last_step for restart in restarts)
        if last_time <= first_time or last_step <= first_step or spans_restart:
            continue
        steps.append(last_step)
        rates.append((last_step - first_step) / (last_time - first_time))
    if not steps:
        return []
    lines = [Series(STEPS_PER_S, "train", steps, rates)]
    if samples_per_step:
        lines.append(Series(SAMPLES_PER_S, "train", steps,
                            [rate * samples_per_step if rate is not None else None for rate in rates]))
    return lines


@dataclass(frozen=True)
class Frontier:
    """Reward against KL from the reference, per logged step (PPO/GRPO), and the upper-left frontier."""

    kl_key: str
    reward_key: str
    split: str
    steps: list[int]
    kl: list[float]
    reward: list[float]

    def pareto(self) -> list[tuple[float, float]]:
        """The points no other point beats on both counts: walking up in KL, each has a higher reward."""
        front: list[tuple[float, float]] = []
        for kl, reward in sorted(zip(self.kl, self.reward), key=lambda point: (point[0], -point[1])):
            if not front or reward > front[-1][1]:
                front.append((kl, reward))
        return front


def frontier(rows: Sequence[dict[str, Any]], split: str) -> Frontier | None:
    """The reward/KL points of ``rows``, or None when the run logs no KL or no reward (SFT, RM)."""
    keys = set(metric_keys(rows))
    kl_key = next((key for key in KL_KEYS if key in keys), None)
    reward_key = next((key for key in REWARD_KEYS if key in keys), None)
    if kl_key is None or reward_key is None:
        return None
    points = [(row["step"], row[kl_key], row[reward_key]) for row in rows
              if row.get(kl_key) is not None and row.get(reward_key) is not None]
    if not points:
        return None
    return Frontier(kl_key, reward_key, split, [p[0] for p in points], [p[1] for p in points],
                    [p[2] for p in points])


# ---------------------------------------------------------------------------------------------- config diff

MISSING = object()  # a key one run's config does not have


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"training": {"lr": 1}}`` -> ``{"training.lr": 1}`` (nested tables become dotted keys)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_diff(configs: Sequence[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """Dotted keys whose value differs between the configs, with each config's value (:data:`MISSING` if absent)."""
    flat = [flatten_config(config) for config in configs]
    keys = sorted(set().union(*flat)) if flat else []
    rows = []
    for key in keys:
        values = [entry.get(key, MISSING) for entry in flat]
        if any(value != values[0] or value is MISSING for value in values):
            rows.append((key, values))
    return rows
