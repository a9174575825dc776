"""The health checks: each a small class fed one logged step (or one batch of samples) at a time.

A check keeps only the state it needs (a streak counter, a baseline, the best held-out reward), so feeding it a
10,000-step history costs O(steps). ``observe`` returns an :class:`Alarm` the moment the condition starts to
hold and ``None`` otherwise; a check that fired fires again only after its condition cleared, or after
``rearm()`` (a run restarted from a checkpoint: streaks count again from zero, baselines are kept). Metrics are
found by name: the first of a check's key aliases present in the step's metrics (stages spell KL ``kl`` or
``kl_k1``), so new stages are covered without code changes.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlhfctl.monitor.settings import Action, HealthSettings
from rlhfctl.monitor.stats import is_finite_number, mean, repeated_ngram_fraction

# Metric names each check reads, most specific first (the report groups its panels with the same names).
KL_KEYS = ("kl", "kl_k1", "objective/kl", "kl_k3", "kl_mean")
ENTROPY_KEYS = ("entropy", "policy/entropy", "objective/entropy", "entropy_mean")
REWARD_KEYS = ("score_mean", "reward_mean", "reward", "rewards/mean", "objective/scores", "raw_score_mean")
RESPONSE_LENGTH_KEYS = ("response_length_mean", "response_length", "completion_length", "completions/mean_length")
EXPLAINED_VARIANCE_KEYS = ("explained_variance", "value/explained_variance", "val/explained_variance")
LENGTH_BIAS_KEYS = ("length_bias_spearman",)
# NaN here means "not defined for this step", not a broken run: explained variance of returns without variance; the
# gradient norm is inf/NaN on the steps fp16 loss scaling skips (a really broken gradient shows in the loss too).
MAY_BE_UNDEFINED_KEYS = frozenset({*EXPLAINED_VARIANCE_KEYS, "grad_norm", "grad_norm_policy", "grad_norm_value"})
RESPONSE_TEXT_KEYS = ("response", "completion")


@dataclass(frozen=True)
class Alarm:
    """One health alarm: which check, what to do, a message for the person watching, and where it fired."""

    check: str  # e.g. "kl_ceiling"
    action: Action  # "warn" | "stop"
    message: str
    step: int
    split: str | None = None  # "train" | "validation" | "samples"
    value: float | None = None  # the value that crossed the threshold
    threshold: float | None = None

    @property
    def stops_run(self) -> bool:
        return self.action == "stop"

    def to_record(self) -> dict[str, Any]:
        """The ``events.jsonl`` record (the writer adds ``time``)."""
        return {"kind": "health", "check": self.check, "action": self.action, "step": self.step,
                "split": self.split, "value": self.value, "threshold": self.threshold, "message": self.message}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Alarm":
        """Read an ``events.jsonl`` health record back (missing optional fields become None)."""
        value, threshold = record.get("value"), record.get("threshold")
        return cls(check=str(record.get("check", "?")),
                   action="stop" if record.get("action") == "stop" else "warn",
                   message=str(record.get("message", "")), step=int(record.get("step") or 0),
                   split=record.get("split"), value=float(value) if is_finite_number(value) else None,
                   threshold=float(threshold) if is_finite_number(threshold) else None)


def first_present(metrics: Mapping[str, Any], keys: Sequence[str]) -> tuple[str, float] | None:
    """The first of ``keys`` whose value in ``metrics`` is a finite number, with that value."""
    for key in keys:
        value = metrics.get(key)
        if is_finite_number(value):
            return key, float(value)
    return None


class Streak:
    """Counts consecutive observations for which a condition held; ``update`` is True when it reaches patience."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.length = 0

    def update(self, holds: bool) -> bool:
        self.length = self.length + 1 if holds else 0
        return self.length == self.patience

    def reset(self) -> None:
        self.length = 0


# ---------------------------------------------------------------------------------------------- metric checks


class NonFiniteMetrics:
    """NaN or inf in any metric of a step (``None`` in metrics.jsonl), except those that may be undefined
    (:data:`MAY_BE_UNDEFINED_KEYS`). Fires again for keys newly non-finite."""

    name = "nonfinite"
    action_key = "nonfinite_action"  # the HealthSettings field (and [monitor] key) of its action

    def __init__(self, settings: HealthSettings) -> None:
        self.action = settings.nonfinite_action
        self._bad: set[tuple[str, str]] = set()

    def rearm(self) -> None:
        self._bad.clear()

    def observe(self, step: int, split: str, metrics: Mapping[str, Any]) -> Alarm | None:
        bad_now = {key for key, value in metrics.items() if key not in MAY_BE_UNDEFINED_KEYS
                   and (value is None or (isinstance(value, float) and not is_finite_number(value)))}
        previously_bad = {key for seen_split, key in self._bad if seen_split == split}
        newly_bad = sorted(bad_now - previously_bad)
        self._bad = {(seen_split, key) for seen_split, key in self._bad if seen_split != split}
        self._bad |= {(split, key) for key in bad_now}
        if not newly_bad:
            return None
        names = ", ".join(f"{split}/{key}" for key in newly_bad)
        return Alarm(self.name, self.action, f"{names} is NaN or infinite at step {step}: the run cannot recover "
                     "from it (lower the learning rate, check the data, or use fp32)", step, split)


class KlCeiling:
    """KL from the reference policy above ``kl_max`` for ``kl_patience`` logged train steps in a row."""

    name = "kl_ceiling"
    action_key = "kl_action"  # the HealthSettings field (and [monitor] key) of its action

    def __init__(self, settings: HealthSettings) -> None:
        self.ceiling = settings.kl_max
        self.action = settings.kl_action
        self._streak = Streak(settings.kl_patience)

    def rearm(self) -> None:
        self._streak.reset()

    def observe(self, step: int, split: str, metrics: Mapping[str, Any]) -> Alarm | None:
        found = first_present(metrics, KL_KEYS) if split == "train" else None
        if found is None:
            return None
        key, kl = found
        if not self._streak.update(kl > self.ceiling):
            return None
        return Alarm(self.name, self.action,
                     f"KL from the reference policy ({key}) is {kl:.3g} nats, above the ceiling {self.ceiling:g} "
                     f"for {self._streak.patience} logged steps in a row: the policy is drifting away from what "
                     "the reward model can judge (raise the KL coefficient or lower the learning rate)",
                     step, split, kl, self.ceiling)


class EntropyCollapse:
    """Entropy below ``entropy_min_ratio`` x its early mean for ``entropy_patience`` logged train steps in a row."""

    name = "entropy_collapse"
    action_key = "entropy_action"  # the HealthSettings field (and [monitor] key) of its action

    def __init__(self, settings: HealthSettings) -> None:
        self.ratio = settings.entropy_min_ratio
        self.baseline_steps = settings.entropy_baseline_steps
        self.action = settings.entropy_action
        self._early: list[float] = []
        self._streak = Streak(settings.entropy_patience)

    def rearm(self) -> None:
        self._streak.reset()

    def observe(self, step: int, split: str, metrics: Mapping[str, Any]) -> Alarm | None:
        found = first_present(metrics, ENTROPY_KEYS) if split == "train" else None
        if found is None:
            return None
        key, entropy = found
        if len(self._early) < self.baseline_steps:
            self._early.append(entropy)
            return None
        baseline = mean(self._early) or 0.0
        if baseline <= 0 or not self._streak.update(entropy < self.ratio * baseline):
            return None
        return Alarm(self.name, self.action,
                     f"policy entropy ({key}) fell to {entropy:.3g}, below {self.ratio:g} x its early mean "
                     f"{baseline:.3g} for {self._streak.patience} logged steps in a row: the policy collapsed onto "
                     "a few outputs (raise the entropy bonus or the KL coefficient, lower the learning rate)",
                     step, split, entropy, self.ratio * baseline)


class RewardDivergence:
    """Train reward rising while the held-out reward stays ``divergence_min_drop`` below its best."""

    name = "reward_divergence"
    action_key = "divergence_action"  # the HealthSettings field (and [monitor] key) of its action

    def __init__(self, settings: HealthSettings) -> None:
        self.min_drop = settings.divergence_min_drop
        self.action = settings.divergence_action
        self._streak = Streak(settings.divergence_patience)
        self._train_steps: list[int] = []
        self._train_rewards: list[float] = []
        self._best: tuple[int, float] | None = None  # (step, held-out reward)

    def rearm(self) -> None:
        self._streak.reset()

    def observe(self, step: int, split: str, metrics: Mapping[str, Any]) -> Alarm | None:
        found = first_present(metrics, REWARD_KEYS)
        if found is None:
            return None
        key, reward = found
        if split == "train":
            self._train_steps.append(step)
            self._train_rewards.append(reward)
            return None
        if split != "validation":
            return None
        if self._best is None or reward > self._best[1]:
            self._best = (step, reward)
            self._streak.update(False)
            return None
        best_step, best_reward = self._best
        falling = best_reward - reward >= self.min_drop and self._train_rose_since(best_step)
        if not self._streak.update(falling):
            return None
        return Alarm(self.name, self.action,
                     f"the held-out reward ({key}) is {reward:.3g}, {best_reward - reward:.3g} below its best "
                     f"{best_reward:.3g} (step {best_step}) for {self._streak.patience} validation passes while the "
                     "train reward kept rising: the policy may be exploiting the reward model (raise the KL "
                     "coefficient, stop at the best checkpoint)", step, split, reward, best_reward - self.min_drop)

    def _train_rose_since(self, best_step: int) -> bool:
        """Mean train reward after ``best_step`` above the mean of as many train steps just before it."""
        split_at = bisect.bisect_right(self._train_steps, best_step)  # train steps are logged in order
        after = self._train_rewards[split_at:]
        if not after:
            return False
        before = self._train_rewards[max(0, split_at - len(after)):split_at]
        if not before:  # the best held-out reward came before any train step: compare halves of what followed
            half = len(after) // 2
            before, after = after[:half], after[half:]
        return bool(before) and (mean(after) or 0.0) > (mean(before) or 0.0)


class LengthAtLimit:
    """Mean response length at ``length_limit_ratio`` x ``max_response_tokens`` for ``length_patience`` steps."""

    name = "length_at_limit"
    action_key = "length_action"  # the HealthSettings field (and [monitor] key) of its action

    def __init__(self, settings: HealthSettings) -> None:
        self.limit = settings.max_response_tokens
        self.ratio = settings.length_limit_ratio
        self.action = settings.length_action
        self._streak = Streak(settings.length_patience)

    def rearm(self) -> None:
        self._streak.reset()

    def observe(self, step: int, split: str, metrics: Mapping[str, Any]) -> Alarm | None:
        found = first_present(metrics, RESPONSE_LENGTH_KEYS) if split == "train" and self.limit else None
        if found is None:
            return None
        key, length = found
        threshold = self.ratio * self.limit
        if not self._streak.update(length >= threshold):
            return None
        return Alarm(self.name, self.action,
                     f"mean response length ({key}) is {length:.3g} tokens, at {length / self.limit:.0%} of the "
                     f"limit {self.limit} for {self._streak.patience} logged steps in a row: responses run to the "
                     "limit instead of ending (a reward model that prefers length, or a missing EOS penalty)",
                     step, split, length, threshold)


class ExplainedVarianceStuck:
    """Explained variance <= 0 for ``explained_variance_patience`` logged train steps after the warm-up."""

    name = "explained_variance_stuck"
    action_key = "explained_variance_action"  # the HealthSettings field (and [monitor] key) of its action

    def __init__(self, settings: HealthSettings) -> None:
        self.warmup_steps = settings.explained_variance_warmup_steps
        self.action = settings.explained_variance_action
        self._streak = Streak(settings.explained_variance_patience)

    def rearm(self) -> None:
        self._streak.reset()

    def observe(self, step: int, split: str, metrics: Mapping[str, Any]) -> Alarm | None:
        found = first_present(metrics, EXPLAINED_VARIANCE_KEYS) if split == "train" else None
        if found is None or step <= self.warmup_steps:
            return None
        key, explained = found
        if not self._streak.update(explained <= 0):
            return None
        return Alarm(self.name, self.action,
                     f"explained variance of the value head ({key}) has been <= 0 for {self._streak.patience} "
                     f"logged steps in a row (latest {explained:.3g}): it predicts returns no better than their "
                     "mean (check the value learning rate, vf_coef, reward scale)", step, split, explained, 0.0)


class RewardModelLengthBias:
    """|Spearman(reward, length)| on validation pairs at or above ``length_bias_max``."""

    name = "rm_length_bias"
    action_key = "length_bias_action"  # the HealthSettings field (and [monitor] key) of its action

    def __init__(self, settings: HealthSettings) -> None:
        self.threshold = settings.length_bias_max
        self.action = settings.length_bias_action
        self._firing = False

    def rearm(self) -> None:
        self._firing = False

    def observe(self, step: int, split: str, metrics: Mapping[str, Any]) -> Alarm | None:
        found = first_present(metrics, LENGTH_BIAS_KEYS) if split == "validation" else None
        if found is None:
            return None
        key, rho = found
        firing = abs(rho) >= self.threshold
        newly, self._firing = firing and not self._firing, firing
        if not newly:
            return None
        baseline = first_present(metrics, ("longer_wins_accuracy",))
        accuracy = first_present(metrics, ("accuracy",))
        comparison = ""
        if baseline is not None:
            comparison = f"; \"longer wins\" alone is {baseline[1]:.0%} accurate"
            if accuracy is not None:
                comparison += f" vs the reward model's {accuracy[1]:.0%}"
        direction = "longer" if rho > 0 else "shorter"
        return Alarm(self.name, self.action,
                     f"the reward model favours {direction} responses: Spearman rank correlation between reward and "
                     f"length is {rho:.2f} on validation pairs (threshold {self.threshold:g}){comparison} (balance "
                     "lengths in the preference data)", step, split, rho, self.threshold)


# ---------------------------------------------------------------------------------------------- sample checks


class RepeatedNgrams:
    """At least ``ngram_response_share`` of a step's sampled responses repeat their own n-grams heavily."""

    name = "repeated_ngrams"
    action_key = "ngram_action"  # the HealthSettings field (and [monitor] key) of its action

    def __init__(self, settings: HealthSettings) -> None:
        self.size = settings.ngram_size
        self.repeat_max = settings.ngram_repeat_max
        self.share_max = settings.ngram_response_share
        self.action = settings.ngram_action
        self._firing = False

    def rearm(self) -> None:
        self._firing = False

    def observe_samples(self, step: int, responses: Sequence[str]) -> Alarm | None:
        if not responses:
            return None
        repetitive = [text for text in responses if repeated_ngram_fraction(text, self.size) >= self.repeat_max]
        share = len(repetitive) / len(responses)
        firing = share >= self.share_max
        newly, self._firing = firing and not self._firing, firing
        if not newly:
            return None
        example = " ".join(repetitive[0].split())[:80]
        return Alarm(self.name, self.action,
                     f"{len(repetitive)} of {len(responses)} sampled responses repeat at least {self.repeat_max:.0%} "
                     f"of their own {self.size}-word n-grams (e.g. \"{example}\"): the policy is looping on a phrase",
                     step, "samples", share, self.share_max)
