"""Metric discovery and grouping, decimation, throughput, the reward/KL frontier and the config diff."""

from __future__ import annotations

import pytest

from rlhfctl.report.series import (
    MISSING,
    SAMPLES_PER_S,
    STEPS_PER_S,
    Series,
    config_diff,
    decimate,
    flatten_config,
    frontier,
    group_of,
    grouped_keys,
    metric_keys,
    series,
    throughput,
)


@pytest.mark.parametrize(("key", "group"), [
    # today's stages
    ("loss", "loss"), ("perplexity", "loss"), ("value_loss", "loss"), ("policy_loss", "loss"),
    ("accuracy", "accuracy"), ("margin", "reward"), ("chosen_reward_mean", "reward"), ("score_mean", "reward"),
    ("non_score_reward", "reward"), ("kl_k1", "kl"), ("kl_k3", "kl"), ("approx_kl", "kl"), ("kl_coef", "kl"),
    ("entropy", "entropy"), ("response_length_mean", "length"), ("eos_rate", "length"), ("lr", "learning_rate"),
    ("learning_rate", "learning_rate"), ("episodes_per_s", "throughput"), (STEPS_PER_S, "throughput"),
    ("time_score_s", "timing"), ("time_generate_s", "timing"), ("grad_norm_policy", "gradients"),
    ("policy_clip_fraction", "clipping"), ("ratio_mean", "clipping"), ("explained_variance", "value"),
    ("episodes", "other"), ("pairs", "other"),
    # stages to come (DPO, GRPO, TRL spellings) need no code
    ("rewards/margins", "reward"), ("rewards/accuracies", "accuracy"), ("kl", "kl"), ("objective/kl", "kl"),
    ("clip_fraction", "clipping"), ("completion_length", "length"), ("length_bias_spearman", "length_bias"),
    ("longer_wins_accuracy", "length_bias"), ("logps/chosen", "other"),
])
def test_metrics_are_grouped_by_name(key: str, group: str) -> None:
    assert group_of(key) == group


def test_metric_keys_in_first_seen_order_without_bookkeeping_and_grouped_for_display() -> None:
    rows = [{"step": 1, "split": "train", "epoch": 0, "time": 1.0, "lr": 1e-3, "loss": 1.0},
            {"step": 2, "split": "train", "loss": 0.5, "kl": 0.1, "widgets": 3.0}]
    keys = metric_keys(rows)
    assert keys == ["lr", "loss", "kl", "widgets"]
    assert grouped_keys(keys) == [("loss", ["loss"]), ("kl", ["kl"]), ("learning_rate", ["lr"]),
                                  ("other", ["widgets"])]
    assert series(rows, "kl", "train") == Series("kl", "train", [2], [0.1])


def test_decimate_keeps_the_shape_spikes_and_gaps_of_long_series() -> None:
    steps = list(range(1, 10_001))
    values: list[float | None] = [1.0] * 10_000
    values[4321] = 50.0  # a spike
    values[7000] = None  # a NaN
    values[8000] = -3.0
    line = decimate(Series("loss", "train", steps, values), max_points=300)
    assert len(line.steps) <= 301 + 100  # ~max_points, plus one gap point per bucket with a NaN at most
    assert line.steps[0] == 1 and line.steps[-1] == 10_000 and line.steps == sorted(line.steps)
    kept = dict(zip(line.steps, line.values))
    assert kept[4322] == 50.0 and kept[7001] is None and kept[8001] == -3.0
    short = Series("loss", "train", [1, 2], [1.0, 2.0])
    assert decimate(short, 300) is short


def test_throughput_from_log_times_skips_restarts() -> None:
    rows = [{"step": step, "time": 100.0 + 0.5 * step} for step in range(1, 11)]
    rows += [{"step": step, "time": 500.0 + 0.25 * step} for step in range(11, 21)]  # restarted after step 10
    steps_per_s, samples_per_s = throughput(rows, samples_per_step=16, restart_steps=[10])
    assert steps_per_s.key == STEPS_PER_S and samples_per_s.key == SAMPLES_PER_S
    assert 11 not in steps_per_s.steps  # the window 10 -> 11 includes the restart
    rates = dict(zip(steps_per_s.steps, steps_per_s.values))
    assert rates[5] == pytest.approx(2.0) and rates[15] == pytest.approx(4.0)
    assert dict(zip(samples_per_s.steps, samples_per_s.values))[15] == pytest.approx(64.0)
    assert throughput(rows, samples_per_step=None) and len(throughput(rows, None)) == 1
    assert throughput([{"step": 1}], 16) == []  # no times logged


def test_throughput_windows_grow_with_long_runs() -> None:
    rows = [{"step": step, "time": step * 0.1 + (0.05 if step % 2 else 0.0)} for step in range(1, 1001)]
    (steps_per_s,) = throughput(rows, None)
    assert steps_per_s.steps[0] == 11  # 1000 steps: windows of 10 steps smooth the jitter
    assert all(value == pytest.approx(10.0) for value in steps_per_s.values)


def test_frontier_points_and_pareto_front() -> None:
    rows = [{"step": 1, "kl_k1": 0.0, "score_mean": 0.1}, {"step": 2, "kl_k1": 1.0, "score_mean": 0.5},
            {"step": 3, "kl_k1": 2.0, "score_mean": 0.4}, {"step": 4, "kl_k1": 3.0, "score_mean": 0.9},
            {"step": 5, "kl_k1": None, "score_mean": 2.0}, {"step": 6, "kl_k1": 1.0, "score_mean": 0.6}]
    points = frontier(rows, "train")
    assert (points.kl_key, points.reward_key, points.steps) == ("kl_k1", "score_mean", [1, 2, 3, 4, 6])
    assert points.pareto() == [(0.0, 0.1), (1.0, 0.6), (3.0, 0.9)]
    assert frontier([{"step": 1, "loss": 1.0}], "train") is None  # SFT/RM: no frontier
    grpo = frontier([{"step": 1, "kl": 0.2, "kl_k1": 9.0, "reward": 1.0}], "train")
    assert (grpo.kl_key, grpo.reward_key) == ("kl", "reward")


def test_config_diff_lists_only_differing_keys_with_missing_ones_marked() -> None:
    first = {"stage": "ppo", "training": {"learning_rate": 1e-4, "kl_coeff": 0.05, "resources": {"CPU": 1}}}
    second = {"stage": "ppo", "training": {"learning_rate": 3e-4, "kl_coeff": 0.05, "resources": {"CPU": 2}},
              "generation": {"top_k": 5}}
    assert flatten_config(first) == {"stage": "ppo", "training.learning_rate": 1e-4, "training.kl_coeff": 0.05,
                                     "training.resources.CPU": 1}
    assert config_diff([first, second]) == [("generation.top_k", [MISSING, 5]),
                                            ("training.learning_rate", [1e-4, 3e-4]),
                                            ("training.resources.CPU", [1, 2])]
    assert config_diff([first, first]) == []
