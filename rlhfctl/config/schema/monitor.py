"""``[monitor]``: every stage's health checks — threshold, patience and action of each (see :mod:`rlhfctl.monitor`).

The defaults are the health library's own (:class:`rlhfctl.monitor.settings.HealthSettings`): one source.
"""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import Field

from rlhfctl.config.schema.common import PositiveInt, Section
from rlhfctl.monitor.settings import Action, HealthSettings

_HEALTH_DEFAULTS = HealthSettings()  # the library's defaults are the section's: one source

Ratio = Annotated[float, Field(gt=0, le=1)]


def _action(default: str, what: str) -> object:
    return Field(default, description=f'Action on {what}: "warn" or "stop". Warn shows and records the alarm; stop '
                                      "also stops the run cleanly, keeping a checkpoint (exit status 1).")


class MonitorConfig(Section):
    """``[monitor]``: thresholds, patience and action of each health check (see :mod:`rlhfctl.monitor`)."""

    enabled: bool = Field(_HEALTH_DEFAULTS.enabled,
                          description="Run the health checks during training (false: none).")

    nonfinite_action: Action = _action(_HEALTH_DEFAULTS.nonfinite_action, "a NaN or infinite metric")

    kl_max: float = Field(
        _HEALTH_DEFAULTS.kl_max, gt=0,
        description="KL ceiling in nats per response (the kl_k1 metric of PPO). The kl_ceiling alarm fires when "
                    "KL stays above it for kl_patience logged train steps in a row.",
    )
    kl_patience: PositiveInt = Field(_HEALTH_DEFAULTS.kl_patience,
                                     description="Logged train steps in a row above kl_max.")
    kl_action: Action = _action(_HEALTH_DEFAULTS.kl_action, "KL above kl_max")

    entropy_min_ratio: Ratio = Field(
        _HEALTH_DEFAULTS.entropy_min_ratio,
        description="Entropy collapse: policy entropy below this fraction of its early mean. The early mean is "
                    "that of the first entropy_baseline_steps logged train steps; the alarm fires after "
                    "entropy_patience steps in a row below it.",
    )
    entropy_baseline_steps: PositiveInt = Field(
        _HEALTH_DEFAULTS.entropy_baseline_steps, description="Logged train steps whose mean entropy is the baseline."
    )
    entropy_patience: PositiveInt = Field(_HEALTH_DEFAULTS.entropy_patience,
                                          description="Logged train steps in a row below the collapse level.")
    entropy_action: Action = _action(_HEALTH_DEFAULTS.entropy_action, "entropy collapse")

    divergence_min_drop: float = Field(
        _HEALTH_DEFAULTS.divergence_min_drop, gt=0,
        description="Reward divergence: the held-out reward this far (reward units) below its best while the "
                    "train reward keeps rising. The alarm fires after divergence_patience validation passes in a "
                    "row.",
    )
    divergence_patience: PositiveInt = Field(_HEALTH_DEFAULTS.divergence_patience,
                                             description="Validation passes in a row with the held-out reward down.")
    divergence_action: Action = _action(_HEALTH_DEFAULTS.divergence_action, "reward divergence")

    length_limit_ratio: Ratio = Field(
        _HEALTH_DEFAULTS.length_limit_ratio,
        description="Responses at the limit: mean response length at or above this fraction of "
                    "generation.max_new_tokens. The alarm fires after length_patience logged train steps in a row.",
    )
    length_patience: PositiveInt = Field(_HEALTH_DEFAULTS.length_patience,
                                         description="Logged train steps in a row at the length limit.")
    length_action: Action = _action(_HEALTH_DEFAULTS.length_action, "responses running to the length limit")

    ngram_size: PositiveInt = Field(_HEALTH_DEFAULTS.ngram_size,
                                    description="Repeated n-grams in samples: n-gram size in words.")
    ngram_repeat_max: Ratio = Field(
        _HEALTH_DEFAULTS.ngram_repeat_max,
        description="A sampled response is repetitive when this share of its own n-grams repeats.",
    )
    ngram_response_share: Ratio = Field(
        _HEALTH_DEFAULTS.ngram_response_share,
        description="The repeated n-grams alarm fires when this share of one step's samples is repetitive.",
    )
    ngram_action: Action = _action(_HEALTH_DEFAULTS.ngram_action, "repeated n-grams in samples")

    explained_variance_warmup_steps: int = Field(
        _HEALTH_DEFAULTS.explained_variance_warmup_steps, ge=0,
        description="Value head not learning: explained variance is not checked up to this step.",
    )
    explained_variance_patience: PositiveInt = Field(
        _HEALTH_DEFAULTS.explained_variance_patience,
        description="Logged train steps in a row with explained variance <= 0 (after the warm-up).",
    )
    explained_variance_action: Action = _action(_HEALTH_DEFAULTS.explained_variance_action,
                                                 "explained variance stuck at or below 0")

    length_bias_max: Ratio = Field(
        _HEALTH_DEFAULTS.length_bias_max,
        description="Reward-model length bias: |Spearman rank correlation| of reward and response length on the "
                    "validation pairs at or above this. The RM stage logs it as the length_bias_spearman "
                    "validation metric.",
    )
    length_bias_action: Action = _action(_HEALTH_DEFAULTS.length_bias_action, "reward-model length bias")

    def health_settings(self, max_response_tokens: Optional[int] = None) -> HealthSettings:
        """The library's settings: every key of this section, plus the response length limit of the stage
        (``generation.max_new_tokens``; None turns the length-limit check off)."""
        return HealthSettings(max_response_tokens=max_response_tokens, **self.model_dump())
