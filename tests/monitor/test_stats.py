"""Golden values for the health checks' statistics (worked out by hand in the comments)."""

from __future__ import annotations

import math

import pytest

from rlhfctl.monitor.stats import (
    average_ranks,
    is_finite_number,
    length_bias,
    longer_wins_accuracy,
    pairwise_accuracy,
    pearson,
    repeated_ngram_fraction,
    spearman,
)


def test_average_ranks_share_the_mean_rank_between_ties() -> None:
    assert average_ranks([10, 20, 20, 30]) == [1.0, 2.5, 2.5, 4.0]
    assert average_ranks([3.0, 1.0, 2.0]) == [3.0, 1.0, 2.0]
    assert average_ranks([5, 5, 5]) == [2.0, 2.0, 2.0]
    assert average_ranks([]) == []


def test_pearson_golden_values() -> None:
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = 1,2,3,4 (mean 2.5), y = 1,3,2,4 (mean 2.5): cov = 2.25+(-0.25)+(-0.25)+2.25 = 4; sx = sy = sqrt(5)
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 5)
    assert pearson([1, 1, 1], [1, 2, 3]) is None  # constant side: undefined
    assert pearson([1], [2]) is None
    with pytest.raises(ValueError, match="2 x values but 3 y values"):
        pearson([1, 2], [1, 2, 3])


def test_spearman_uses_ranks_so_any_monotone_relation_is_one() -> None:
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [10, 5, 2, 1]) == pytest.approx(-1.0)
    # ranks of y = 4, 1, 3, 2 (values 40, 10, 30, 20): d = -3, 1, 0, 2 -> 1 - 6*14/(4*15) = -0.4
    assert spearman([1, 2, 3, 4], [40, 10, 30, 20]) == pytest.approx(-0.4)


def test_spearman_with_ties_matches_the_pearson_of_average_ranks() -> None:
    # x ranks 1, 2.5, 2.5, 4; y ranks 1, 2, 3, 4: cov = 2.25 + 0 + 0 + 2.25 = 4.5,
    # sx = sqrt(2.25+0+0+2.25) = sqrt(4.5), sy = sqrt(5) -> 4.5 / sqrt(22.5) = 0.948683...
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # scipy.stats.spearmanr


def test_longer_wins_accuracy_counts_ties_as_half() -> None:
    assert longer_wins_accuracy([10, 5, 7, 3], [4, 9, 7, 1]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert longer_wins_accuracy([], []) is None
    with pytest.raises(ValueError):
        longer_wins_accuracy([1], [])


def test_pairwise_accuracy_is_strict() -> None:
    assert pairwise_accuracy([1.0, 0.5, 2.0], [0.0, 0.5, 3.0]) == pytest.approx(1 / 3)
    assert pairwise_accuracy([], []) is None


def test_length_bias_ranks_every_response_together() -> None:
    # chosen (reward, length): (3, 30), (2, 20); rejected: (1, 10), (0, 5): reward and length rank identically
    bias = length_bias([3.0, 2.0], [1.0, 0.0], [30, 20], [10, 5])
    assert bias.spearman == pytest.approx(1.0)
    assert bias.longer_wins_accuracy == 1.0 and bias.reward_model_accuracy == 1.0 and bias.pairs == 2
    # chosen shorter but preferred: the RM does not follow length
    unbiased = length_bias([3.0, 2.0], [1.0, 0.0], [5, 10], [30, 20])
    assert unbiased.spearman == pytest.approx(-0.8)  # ranks r=4,3,2,1 vs l=1,2,4,3: d=3,1,-2,-2 -> 1-6*18/60
    assert unbiased.longer_wins_accuracy == 0.0
    with pytest.raises(ValueError, match="one entry per pair"):
        length_bias([1.0], [0.0], [1, 2], [3])


def test_repeated_ngram_fraction_golden_values() -> None:
    assert repeated_ngram_fraction("a b a b a b", 2) == pytest.approx(3 / 5)
    assert repeated_ngram_fraction("the cat sat on the mat", 2) == 0.0
    assert repeated_ngram_fraction("help help help help help", 1) == pytest.approx(4 / 5)
    assert repeated_ngram_fraction("too short", 4) == 0.0
    assert repeated_ngram_fraction("", 4) == 0.0
    with pytest.raises(ValueError):
        repeated_ngram_fraction("x", 0)


def test_is_finite_number() -> None:
    assert is_finite_number(1) and is_finite_number(-2.5)
    assert not any(is_finite_number(value) for value in (None, math.nan, math.inf, True, "1"))
