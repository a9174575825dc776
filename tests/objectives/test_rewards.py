"""The verifiable reward functions, case by case."""

from __future__ import annotations

import pytest

from rlhfctl.objectives import rewards


def test_exact_match_strips_and_optionally_ignores_case():
    assert rewards.exact_match("  42\n", "42") == 1.0
    assert rewards.exact_match("42.0", "42") == 0.0
    assert rewards.exact_match("Paris", "paris") == 0.0
    assert rewards.exact_match("Paris", "paris", ignore_case=True) == 1.0
    assert rewards.exact_match("7", 7) == 1.0  # numeric answers from JSON compare as text


def test_exact_match_compares_the_last_extracted_match():
    pattern = r"answer is (\d+)"
    assert rewards.exact_match("the answer is 3, no wait, the answer is 4", "4", extract=pattern) == 1.0
    assert rewards.exact_match("the answer is 3, no wait, the answer is 4", "3", extract=pattern) == 0.0
    assert rewards.exact_match("no idea", "4", extract=pattern) == 0.0
    assert rewards.exact_match("x = 12 then 13", "13", extract=r"\d+") == 1.0  # no group: the whole match
    assert rewards.exact_match("a", "a", extract=r"(b)?a") == 0.0  # the group did not take part


def test_contains_regex_and_length():
    assert rewards.contains("Sure! Hope that helps!", "Hope that helps") == 1.0
    assert rewards.contains("sure! hope that helps!", "Hope that helps") == 0.0
    assert rewards.contains("sure! hope that helps!", "Hope that helps", ignore_case=True) == 1.0
    assert rewards.regex_match("call 555-1234 now", r"\d{3}-\d{4}") == 1.0
    assert rewards.regex_match("call 555-1234 now", r"\d{3}-\d{4}", full_match=True) == 0.0
    assert rewards.regex_match("555-1234", r"\d{3}-\d{4}", full_match=True) == 1.0
    assert [rewards.length_within(n, min_tokens=2, max_tokens=4) for n in (1, 2, 4, 5)] == [0.0, 1.0, 1.0, 0.0]
    assert rewards.length_within(10_000, min_tokens=1) == 1.0


def test_weighted_sum_and_the_user_function_mark():
    total = rewards.weighted_sum({"rm": [0.5, -1.0], "contains": [1.0, 0.0]}, {"rm": 2.0, "contains": 0.5})
    assert total == pytest.approx([1.5, -2.0])
    with pytest.raises(ValueError, match="differ in length"):
        rewards.weighted_sum({"a": [1.0], "b": [1.0, 2.0]}, {"a": 1.0, "b": 1.0})

    def plain(prompt, response, row):
        return 1.0

    assert not rewards.is_reward_function(plain)
    assert rewards.is_reward_function(rewards.reward_function(plain))
    assert not rewards.is_reward_function("not callable")
