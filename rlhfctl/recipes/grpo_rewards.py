"""GRPO's reward: the ``[reward]`` section turned into named, weighted components (recipe-private).

A component scores a batch of completions: the reward model (its raw score at the last real token) or one of the
verifiable functions of :mod:`rlhfctl.objectives.rewards`, chosen by name from the config; a completion's reward
is the weighted sum. ``name = "python"`` imports the user's ``package.module:function``: this runs the user's
code, which is why the function must be installed by the user and marked with ``@reward_function``; nothing else
in a config is ever executed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rlhfctl.config.schema.grpo import (
    ContainsReward,
    ExactMatchReward,
    GRPOConfig,
    LengthReward,
    PythonReward,
    RegexReward,
)
from rlhfctl.errors import ConfigError, ConfigIssue
from rlhfctl.objectives import rewards

REWARD_MODEL = "reward_model"  # the reward model's component name (metrics: rewards/reward_model)


@dataclass(frozen=True)
class Completions:
    """What a reward function sees of a batch of completions (all lists of the same length)."""

    rows: Sequence[dict]  # the prompt rows (``prompt`` plus the keys the functions read, e.g. ``answer``)
    prompts: Sequence[str]  # the rendered prompt texts
    responses: Sequence[str]  # the decoded responses (special tokens removed)
    response_tokens: Sequence[int]  # response length in tokens, the stop token not counted


@dataclass(frozen=True)
class RewardFunction:
    """One verifiable component: ``score(completions) -> one float per completion``."""

    name: str  # unique within a run: "contains", "contains_2", ...
    weight: float
    score: Callable[[Completions], list[float]]


def row_keys(config: GRPOConfig) -> dict[str, str]:
    """The prompt-row keys the reward functions read, each with who reads it (for data loading's errors)."""
    needed = {}
    for index, spec in enumerate(config.reward.functions):
        if isinstance(spec, ExactMatchReward):
            needed.setdefault(spec.field, f"reward.functions[{index}] (exact_match)")
    return needed


def build_reward_functions(config: GRPOConfig) -> list[RewardFunction]:
    """The config's reward functions, ready to call (imports ``python`` ones: ConfigError when one is unusable)."""
    built, seen = [], {REWARD_MODEL: 1}
    issues = []
    for index, spec in enumerate(config.reward.functions):
        seen[spec.name] = seen.get(spec.name, 0) + 1
        name = spec.name if seen[spec.name] == 1 else f"{spec.name}_{seen[spec.name]}"
        try:
            built.append(RewardFunction(name, spec.weight, _scorer(spec)))
        except ValueError as exc:
            issues.append(ConfigIssue(f"reward.functions[{index}].function", str(exc), spec.function))
    if issues:
        raise ConfigError(issues)
    return built


def _scorer(spec) -> Callable[[Completions], list[float]]:
    if isinstance(spec, ExactMatchReward):
        return lambda batch: [rewards.exact_match(response, row[spec.field], extract=spec.extract,
                                                  ignore_case=spec.ignore_case)
                              for response, row in zip(batch.responses, batch.rows)]
    if isinstance(spec, ContainsReward):
        return lambda batch: [rewards.contains(response, spec.text, ignore_case=spec.ignore_case)
                              for response in batch.responses]
    if isinstance(spec, RegexReward):
        return lambda batch: [rewards.regex_match(response, spec.pattern, full_match=spec.full_match)
                              for response in batch.responses]
    if isinstance(spec, LengthReward):
        return lambda batch: [rewards.length_within(tokens, min_tokens=spec.min_tokens, max_tokens=spec.max_tokens)
                              for tokens in batch.response_tokens]
    if isinstance(spec, PythonReward):
        function = load_user_function(spec.function)
        return lambda batch: [_checked(function(prompt, response, dict(row)), spec.function)
                              for prompt, response, row in zip(batch.prompts, batch.responses, batch.rows)]
    raise ValueError(f"no scorer for reward function {spec.name!r}")  # unreachable: the schema lists them all


def load_user_function(reference: str) -> Callable[[str, str, dict], float]:
    """Import ``package.module:function`` (RUNS THE MODULE'S CODE) and check it is marked ``@reward_function``."""
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} ({exc}); install the package that holds your reward "
                         "function on every machine that trains") from None
    function = getattr(module, attribute, None)
    if function is None:
        raise ValueError(f"{module_name!r} has no {attribute!r}")
    if not rewards.is_reward_function(function):
        raise ValueError(f"{reference} is not marked as a reward function: decorate it with "
                         "@rlhfctl.objectives.rewards.reward_function (only marked functions can be called "
                         "from a config)")
    return function


def _checked(value: Any, reference: str) -> float:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"the reward function {reference} returned {value!r}; expected a finite number")
    return float(value)
