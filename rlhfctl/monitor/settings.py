"""Thresholds and actions of the health checks: one plain frozen dataclass, every default documented.

The ``[monitor]`` config section (pydantic) converts to this object; library code and tests build it directly:
``HealthSettings(kl_max=10.0, kl_action="warn")``. ``action = "warn"`` records the alarm and carries on;
``"stop"`` asks the training loop to stop after saving a checkpoint (the caller acts on ``Alarm.stops_run``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

Action = Literal["warn", "stop"]
ACTIONS: tuple[str, ...] = ("warn", "stop")


@dataclass(frozen=True)
class HealthSettings:
    """Every health check's threshold, patience and action. ``enabled=False`` turns every check off."""

    enabled: bool = True

    # NaN or inf in any logged metric (written as null in metrics.jsonl): training cannot recover from it.
    nonfinite_action: Action = "stop"

    # KL from the reference policy (PPO/GRPO; nats per response, the `kl`/`kl_k1` metric) above a ceiling for
    # `kl_patience` logged train steps in a row: the policy is drifting away from what the reward model knows.
    kl_max: float = 20.0
    kl_patience: int = 3
    kl_action: Action = "stop"

    # Policy entropy (nats per token) below `entropy_min_ratio` x its mean over the first
    # `entropy_baseline_steps` logged train steps, for `entropy_patience` steps in a row: the policy collapsed
    # onto a few outputs.
    entropy_min_ratio: float = 0.1
    entropy_baseline_steps: int = 5
    entropy_patience: int = 5
    entropy_action: Action = "warn"

    # The held-out reward fell at least `divergence_min_drop` (reward units) below its best for
    # `divergence_patience` validation passes in a row while the train reward kept rising: reward hacking.
    divergence_min_drop: float = 0.1
    divergence_patience: int = 2
    divergence_action: Action = "warn"

    # Mean response length at or above `length_limit_ratio` x `max_response_tokens` (generation.max_new_tokens)
    # for `length_patience` logged train steps in a row: responses run to the limit instead of ending.
    # Off while `max_response_tokens` is None.
    max_response_tokens: int | None = None
    length_limit_ratio: float = 0.95
    length_patience: int = 5
    length_action: Action = "warn"

    # Repeated word n-grams in sampled responses: at least `ngram_response_share` of one step's samples repeat
    # `ngram_repeat_max` or more of their own `ngram_size`-word n-grams (a policy looping on a phrase).
    ngram_size: int = 4
    ngram_repeat_max: float = 0.5
    ngram_response_share: float = 0.5
    ngram_action: Action = "warn"

    # Explained variance of the value head <= 0 for `explained_variance_patience` logged train steps in a row
    # after step `explained_variance_warmup_steps`: the value model predicts returns no better than their mean.
    explained_variance_warmup_steps: int = 10
    explained_variance_patience: int = 20
    explained_variance_action: Action = "warn"

    # Reward model length bias on validation pairs: |Spearman rank correlation| between reward and response
    # length (the `length_bias_spearman` validation metric) at or above `length_bias_max`.
    length_bias_max: float = 0.5
    length_bias_action: Action = "warn"

    def __post_init__(self) -> None:
        problems = []
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_action") and value not in ACTIONS:
                problems.append(f"{field.name} must be one of {', '.join(ACTIONS)}, got {value!r}")
            elif field.name.endswith(("_patience", "_baseline_steps", "ngram_size")) and (
                    not isinstance(value, int) or value < 1):
                problems.append(f"{field.name} must be a whole number >= 1, got {value!r}")
            elif field.name.endswith(("_ratio", "_share", "_repeat_max", "length_bias_max")) and not (
                    isinstance(value, (int, float)) and 0 < value <= 1):
                problems.append(f"{field.name} must be in (0, 1], got {value!r}")
        if self.max_response_tokens is not None and self.max_response_tokens < 1:
            problems.append(f"max_response_tokens must be >= 1 or None, got {self.max_response_tokens!r}")
        if problems:
            raise ValueError("invalid health settings: " + "; ".join(problems))
