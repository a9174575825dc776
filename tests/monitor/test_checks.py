"""Golden tests of every health check on synthetic metric histories: the exact step each alarm fires at."""

from __future__ import annotations

import math

import pytest

from rlhfctl.monitor.checks import (
    Alarm,
    EntropyCollapse,
    ExplainedVarianceStuck,
    KlCeiling,
    LengthAtLimit,
    NonFiniteMetrics,
    RepeatedNgrams,
    RewardDivergence,
    RewardModelLengthBias,
)
from rlhfctl.monitor.settings import HealthSettings


def fired_steps(check, history: list[tuple[int, str, dict]]) -> list[int]:
    return [alarm.step for step, split, metrics in history if (alarm := check.observe(step, split, metrics))]


def train(values: list[float | None], key: str, start: int = 1) -> list[tuple[int, str, dict]]:
    return [(start + index, "train", {key: value}) for index, value in enumerate(values)]


def test_kl_ceiling_fires_once_per_streak_of_patience_steps_above_the_ceiling() -> None:
    check = KlCeiling(HealthSettings(kl_max=20.0, kl_patience=3))
    history = train([1, 5, 25, 30, 10, 21, 22, 23, 24, 5, 30, 30, 30], "kl_k1")
    assert fired_steps(check, history) == [8, 13]  # 3-4 is only two steps; 6-7-8 fires; 11-12-13 again


def test_kl_ceiling_message_action_and_key_preference() -> None:
    check = KlCeiling(HealthSettings(kl_max=1.0, kl_patience=1))
    alarm = check.observe(4, "train", {"kl": 3.5, "kl_k1": 0.0})  # "kl" (GRPO's name) wins over kl_k1
    assert alarm == Alarm("kl_ceiling", "stop", alarm.message, 4, "train", 3.5, 1.0)
    assert alarm.stops_run
    assert "(kl) is 3.5 nats, above the ceiling 1" in alarm.message and "KL coefficient" in alarm.message
    assert check.observe(5, "validation", {"kl": 9.0}) is None  # validation passes are not counted
    assert check.observe(6, "train", {"loss": 1.0}) is None  # no KL metric (SFT, RM): never fires


def test_entropy_collapse_against_the_early_mean() -> None:
    check = EntropyCollapse(HealthSettings(entropy_min_ratio=0.1, entropy_baseline_steps=5, entropy_patience=2))
    history = train([5, 5, 5, 5, 5, 4, 0.4, 0.3, 0.2, 3, 0.1, 0.1], "entropy")
    assert fired_steps(check, history) == [8, 12]  # threshold 0.5: steps 7-8, then 11-12
    alarm = EntropyCollapse(HealthSettings(entropy_baseline_steps=1, entropy_patience=1)).observe
    alarm(1, "train", {"entropy": 2.0})
    found = alarm(2, "train", {"entropy": 0.1})
    assert found is not None and found.threshold == pytest.approx(0.2) and found.action == "warn"
    assert "fell to 0.1, below 0.1 x its early mean 2" in found.message


def rising_train_and(validation: dict[int, float], *, train_slope: float = 0.01) -> list[tuple[int, str, dict]]:
    history = []
    for step in range(0, 41):
        if step:
            history.append((step, "train", {"score_mean": 1.0 + train_slope * step}))
        if step in validation:
            history.append((step, "validation", {"score_mean": validation[step]}))
    return history


def test_reward_divergence_fires_when_held_out_reward_falls_while_train_reward_rises() -> None:
    validation = {0: 1.0, 10: 1.2, 20: 1.05, 30: 1.0, 40: 0.9}
    check = RewardDivergence(HealthSettings(divergence_min_drop=0.1, divergence_patience=2))
    assert fired_steps(check, rising_train_and(validation)) == [30]  # 20 and 30 are 0.15 / 0.2 below the best
    check = RewardDivergence(HealthSettings(divergence_patience=2))
    alarms = [alarm for entry in rising_train_and(validation) if (alarm := check.observe(*entry))]
    assert len(alarms) == 1 and alarms[0].value == pytest.approx(1.0)
    assert "is 1, 0.2 below its best 1.2 (step 10) for 2 validation passes" in alarms[0].message


def test_reward_divergence_stays_quiet_when_both_fall_or_the_drop_is_small() -> None:
    falling_together = rising_train_and({0: 1.0, 10: 1.2, 20: 1.05, 30: 1.0, 40: 0.9}, train_slope=-0.01)
    assert fired_steps(RewardDivergence(HealthSettings()), falling_together) == []
    small_drop = rising_train_and({0: 1.0, 10: 1.2, 20: 1.15, 30: 1.12, 40: 1.11})
    assert fired_steps(RewardDivergence(HealthSettings()), small_drop) == []
    recovering = rising_train_and({0: 1.0, 10: 1.2, 20: 1.05, 30: 1.3, 40: 1.1})
    assert fired_steps(RewardDivergence(HealthSettings()), recovering) == []  # never two passes in a row


def test_length_at_limit_needs_the_limit_and_patience() -> None:
    history = train([20, 31, 32, 32, 10, 31], "response_length_mean")
    assert fired_steps(LengthAtLimit(HealthSettings()), history) == []  # no max_response_tokens: off
    check = LengthAtLimit(HealthSettings(max_response_tokens=32, length_limit_ratio=0.95, length_patience=2))
    assert fired_steps(check, history) == [3]  # threshold 30.4: steps 2-3
    alarm = LengthAtLimit(HealthSettings(max_response_tokens=32, length_patience=1)).observe(
        7, "train", {"response_length_mean": 32.0})
    assert alarm is not None and "at 100% of the limit 32" in alarm.message


def test_explained_variance_stuck_after_the_warm_up() -> None:
    check = ExplainedVarianceStuck(HealthSettings(explained_variance_warmup_steps=10,
                                                  explained_variance_patience=3))
    history = train([-0.5] * 20, "explained_variance")
    assert fired_steps(check, history) == [13]  # steps 11, 12, 13 after the warm-up
    healthy = ExplainedVarianceStuck(HealthSettings(explained_variance_warmup_steps=0,
                                                    explained_variance_patience=3))
    assert fired_steps(healthy, train([-0.5, 0.1, -0.2, -0.1, 0.3, 0.5], "explained_variance")) == []


def test_nonfinite_fires_for_each_key_when_it_turns_nan_or_inf() -> None:
    check = NonFiniteMetrics(HealthSettings())
    history = [(1, "train", {"loss": 1.0, "kl": 2.0}), (2, "train", {"loss": None, "kl": 2.0}),
               (3, "train", {"loss": None, "kl": math.inf}), (4, "train", {"loss": 0.5, "kl": 1.0}),
               (5, "train", {"loss": math.nan, "kl": 1.0}), (5, "validation", {"loss": None})]
    alarms = [check.observe(*entry) for entry in history]
    assert [alarm.step if alarm else None for alarm in alarms] == [None, 2, 3, None, 5, 5]
    assert "train/loss is NaN or infinite at step 2" in alarms[1].message
    assert "train/kl" in alarms[2].message and "loss" not in alarms[2].message.split(" is ")[0]
    assert alarms[5].message.startswith("validation/loss") and alarms[1].action == "stop"


def test_nonfinite_ignores_metrics_that_may_be_undefined() -> None:
    """Explained variance of constant returns and the gradient norm without clipping are NaN by definition."""
    check = NonFiniteMetrics(HealthSettings())
    undefined = {"loss": 0.5, "explained_variance": math.nan, "grad_norm": math.nan, "grad_norm_policy": None}
    assert check.observe(1, "train", undefined) is None
    assert check.observe(2, "train", {**undefined, "loss": math.nan}).message.startswith("train/loss is NaN")


def test_reward_model_length_bias_from_validation_metrics() -> None:
    check = RewardModelLengthBias(HealthSettings(length_bias_max=0.5))
    metrics = {"accuracy": 0.81, "longer_wins_accuracy": 0.78}
    history = [(10, "validation", {**metrics, "length_bias_spearman": 0.3}),
               (20, "validation", {**metrics, "length_bias_spearman": 0.7}),
               (30, "validation", {**metrics, "length_bias_spearman": 0.8}),
               (40, "validation", {**metrics, "length_bias_spearman": 0.2}),
               (50, "validation", {"length_bias_spearman": -0.6}),
               (60, "train", {"length_bias_spearman": 0.9})]
    alarms = [check.observe(*entry) for entry in history]
    assert [alarm.step if alarm else None for alarm in alarms] == [None, 20, None, None, 50, None]
    assert ("favours longer responses: Spearman rank correlation between reward and length is 0.70"
            in alarms[1].message)
    assert "\"longer wins\" alone is 78% accurate vs the reward model's 81%" in alarms[1].message
    assert "favours shorter" in alarms[4].message and "longer wins" not in alarms[4].message


def test_repeated_ngrams_in_a_batch_of_samples() -> None:
    check = RepeatedNgrams(HealthSettings(ngram_size=2, ngram_repeat_max=0.5, ngram_response_share=0.5))
    looping = ["help me help me help me help me", "so so so so so so", "fine thanks", "sure sure sure sure sure"]
    fluent = ["I can help with that.", "Here is one way to do it.", "Thanks for asking!", "Try a damp cloth."]
    results = [check.observe_samples(step, batch) for step, batch in
               ((5, looping), (10, looping), (15, fluent), (20, looping), (25, []))]
    assert [alarm.step if alarm else None for alarm in results] == [5, None, None, 20, None]
    assert results[0].message.startswith("3 of 4 sampled responses repeat at least 50% of their own 2-word n-grams")
    assert results[0].split == "samples" and results[0].value == pytest.approx(0.75)


def test_alarm_round_trips_through_an_events_record() -> None:
    alarm = Alarm("kl_ceiling", "stop", "KL is high", 12, "train", 25.0, 20.0)
    record = alarm.to_record()
    assert record == {"kind": "health", "check": "kl_ceiling", "action": "stop", "step": 12, "split": "train",
                      "value": 25.0, "threshold": 20.0, "message": "KL is high"}
    assert Alarm.from_record(record) == alarm
    assert Alarm.from_record({"kind": "health", "check": "x", "value": None}).value is None
