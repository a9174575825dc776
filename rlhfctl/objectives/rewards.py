"""Verifiable reward functions: a completion's text (and token count) -> a number, no model involved.

GRPO's ``[reward]`` section names these by ``name`` (:mod:`rlhfctl.config.schema.grpo`); each returns 1.0 when the
completion passes its check and 0.0 otherwise, and the stage adds them up with their weights
(:func:`weighted_sum`). Pure Python, no torch (tested in tests/objectives/test_rewards.py).

A reward function of your own (``name = "python"``, ``function = "package.module:name"``) must be marked with
:func:`reward_function`, so a config can only call functions written to be rewards::

    from rlhfctl.objectives.rewards import reward_function

    @reward_function
    def mentions_the_city(prompt: str, response: str, row: dict) -> float:
        return float(row["city"].lower() in response.lower())
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

MARK = "__rlhfctl_reward_function__"


def reward_function(function: Callable[[str, str, dict], float]) -> Callable[[str, str, dict], float]:
    """Mark ``function(prompt, response, row) -> float`` as usable from a GRPO config (``name = "python"``)."""
    setattr(function, MARK, True)
    return function


def is_reward_function(candidate: Any) -> bool:
    """Whether ``candidate`` is a callable marked with :func:`reward_function`."""
    return callable(candidate) and getattr(candidate, MARK, False) is True


def exact_match(response: str, answer: str, *, extract: str | None = None, ignore_case: bool = False) -> float:
    """1.0 when ``response`` equals ``answer`` (both stripped of surrounding whitespace), else 0.0.

    ``extract``: a regular expression; its **last** match in the response is compared instead (its first group when
    it has groups, else the whole match); no match scores 0.0.
    """
    candidate = response
    if extract is not None:
        matches = list(re.finditer(extract, response))
        if not matches:
            return 0.0
        last = matches[-1]
        candidate = last.group(1) if last.re.groups else last.group(0)
        if candidate is None:
            return 0.0
    found, expected = candidate.strip(), str(answer).strip()
    if ignore_case:
        found, expected = found.casefold(), expected.casefold()
    return float(found == expected)


def contains(response: str, text: str, *, ignore_case: bool = False) -> float:
    """1.0 when ``text`` occurs in ``response``, else 0.0."""
    if ignore_case:
        return float(text.casefold() in response.casefold())
    return float(text in response)


def regex_match(response: str, pattern: str, *, full_match: bool = False) -> float:
    """1.0 when ``pattern`` matches somewhere in ``response`` (or all of it with ``full_match``), else 0.0."""
    matcher = re.fullmatch if full_match else re.search
    return float(matcher(pattern, response) is not None)


def length_within(num_tokens: int, *, min_tokens: int = 0, max_tokens: int | None = None) -> float:
    """1.0 when ``min_tokens <= num_tokens <= max_tokens`` (no upper limit when ``max_tokens`` is None)."""
    return float(num_tokens >= min_tokens and (max_tokens is None or num_tokens <= max_tokens))


def weighted_sum(components: Mapping[str, Sequence[float]], weights: Mapping[str, float]) -> list[float]:
    """``sum_k weights[k] * components[k][i]`` for every completion ``i`` (all components the same length)."""
    lengths = {len(values) for values in components.values()}
    if len(lengths) > 1:
        raise ValueError(f"reward components differ in length: {sorted(lengths)}")
    count = lengths.pop() if lengths else 0
    return [sum(weights[name] * float(values[index]) for name, values in components.items())
            for index in range(count)]
