"""Pure statistics behind the health checks: plain lists of floats in, floats out (no numpy, no torch).

Every function is small enough to check by hand; ``tests/monitor/test_stats.py`` holds the golden values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def is_finite_number(value: object) -> bool:
    """True for an int/float that is neither NaN nor ±inf (not ``None``: metrics.jsonl's spelling of NaN/inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span.

    ``[10, 20, 20, 30] -> [1.0, 2.5, 2.5, 4.0]`` (the "fractional ranking" Spearman's coefficient uses).
    """
    order = sorted(range(len(values)), key=lambda index: values[index])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        shared_rank = (start + end) / 2 + 1  # mean of the 1-based ranks start+1 .. end+1
        for position in range(start, end + 1):
            ranks[order[position]] = shared_rank
        start = end + 1
    return ranks


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's correlation coefficient; ``None`` when it is undefined (fewer than 2 points, a constant side)."""
    if len(xs) != len(ys):
        raise ValueError(f"pearson: {len(xs)} x values but {len(ys)} y values")
    count = len(xs)
    if count < 2:
        return None
    mean_x, mean_y = sum(xs) / count, sum(ys) / count
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    spread_x = math.sqrt(sum((x - mean_x) ** 2 for x in xs))
    spread_y = math.sqrt(sum((y - mean_y) ** 2 for y in ys))
    if spread_x == 0 or spread_y == 0:
        return None
    return max(-1.0, min(1.0, covariance / (spread_x * spread_y)))


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation: Pearson's coefficient of the average ranks (ties handled as scipy does).

    Reference: Spearman (1904); ``scipy.stats.spearmanr`` computes the same value. ``None`` when undefined.
    """
    return pearson(average_ranks(xs), average_ranks(ys))


def longer_wins_accuracy(chosen_lengths: Sequence[float], rejected_lengths: Sequence[float]) -> float | None:
    """Accuracy of the baseline "the longer response is the chosen one" over preference pairs.

    A pair with equal lengths counts as half right (a coin flip). ``None`` without pairs. A reward model whose
    accuracy is not clearly above this baseline may have learned length rather than quality.
    """
    if len(chosen_lengths) != len(rejected_lengths):
        raise ValueError(f"{len(chosen_lengths)} chosen lengths but {len(rejected_lengths)} rejected lengths")
    if not chosen_lengths:
        return None
    right = sum(1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0
                for chosen, rejected in zip(chosen_lengths, rejected_lengths))
    return right / len(chosen_lengths)


def pairwise_accuracy(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float]) -> float | None:
    """Share of pairs whose chosen reward is strictly above the rejected one (the RM's own accuracy)."""
    if len(chosen_rewards) != len(rejected_rewards):
        raise ValueError(f"{len(chosen_rewards)} chosen rewards but {len(rejected_rewards)} rejected rewards")
    if not chosen_rewards:
        return None
    return sum(chosen > rejected for chosen, rejected in zip(chosen_rewards, rejected_rewards)) / len(chosen_rewards)


@dataclass(frozen=True)
class LengthBias:
    """How much a reward model's scores follow response length, on validation pairs."""

    spearman: float | None  # rank correlation of reward and length over every chosen and rejected response
    longer_wins_accuracy: float | None  # accuracy of "the longer response wins" on the same pairs
    reward_model_accuracy: float | None  # the RM's own pairwise accuracy, for comparison
    pairs: int


def length_bias(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float],
                chosen_lengths: Sequence[float], rejected_lengths: Sequence[float]) -> LengthBias:
    """Length-bias statistics of a reward model on ``pairs`` (four lists of equal length, one entry per pair).

    ``spearman`` ranks all 2 x pairs responses together (each response's reward against its length in tokens).
    These are the values ``rm eval --json`` reports as ``length_bias_spearman`` and ``longer_wins_accuracy``.
    """
    sizes = {len(chosen_rewards), len(rejected_rewards), len(chosen_lengths), len(rejected_lengths)}
    if len(sizes) != 1:
        raise ValueError("length_bias: the four lists must have one entry per pair (got lengths "
                         f"{len(chosen_rewards)}, {len(rejected_rewards)}, {len(chosen_lengths)}, "
                         f"{len(rejected_lengths)})")
    rewards = [*chosen_rewards, *rejected_rewards]
    lengths = [*chosen_lengths, *rejected_lengths]
    return LengthBias(
        spearman=spearman(rewards, lengths),
        longer_wins_accuracy=longer_wins_accuracy(chosen_lengths, rejected_lengths),
        reward_model_accuracy=pairwise_accuracy(chosen_rewards, rejected_rewards),
        pairs=len(chosen_rewards),
    )


def repeated_ngram_fraction(text: str, n: int = 4) -> float:
    """Share of the word n-grams of ``text`` that repeat an n-gram seen earlier in the same text.

    Words are whitespace-separated. ``"a b a b a b"`` with n=2 has 5 bigrams of which 3 repeat ("a b", "b a",
    "a b") -> 0.6. A text with fewer than n words has no n-grams -> 0.0. Degenerate policies loop on a
    phrase; fluent text stays near 0.
    """
    if n < 1:
        raise ValueError(f"n-gram size must be at least 1, got {n}")
    words = text.split()
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for start in range(total):
        gram = tuple(words[start:start + n])
        if gram in seen:
            repeats += 1
        else:
            seen.add(gram)
    return repeats / total


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
