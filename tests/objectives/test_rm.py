"""Golden-value tests of the reward-model math (hand-computed numbers)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfctl.objectives.rm import (
    last_token_index,
    metrics_from_sums,
    pair_sums,
    pairwise_loss,
    reward_stats,
    truncate_keep_response_end,
)

LOG1P_E_MINUS_1 = math.log(1 + math.exp(-1))  # -logsigmoid(1)  = 0.3132616875
LOG1P_E = math.log(1 + math.e)  # -logsigmoid(-1) = 1.3132616875


def test_pairwise_loss_accuracy_and_reward_statistics():
    stats = pairwise_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert float(stats.loss) == pytest.approx((LOG1P_E_MINUS_1 + LOG1P_E) / 2)  # 0.8132616875
    assert stats.accuracy == 0.5
    assert stats.reward_margin == pytest.approx(0.0)
    assert stats.chosen_reward_mean == pytest.approx(1.0)
    assert stats.chosen_reward_std == pytest.approx(1.0)  # population std of [2, 0]
    assert stats.rejected_reward_mean == pytest.approx(1.0)
    assert stats.rejected_reward_std == pytest.approx(0.0)


def test_pairwise_loss_subtracts_the_per_row_margin():
    stats = pairwise_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), margin=torch.tensor([0.5, 0.0]))
    expected = (math.log(1 + math.exp(-0.5)) + LOG1P_E) / 2  # 0.8936693...
    assert float(stats.loss) == pytest.approx(expected)
    assert stats.reward_margin == pytest.approx(0.0)  # the metric is the raw reward gap


def test_center_rewards_coefficient_adds_mean_squared_sum():
    stats = pairwise_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), center_rewards_coefficient=0.1)
    # mean((2+1)^2, (0+1)^2) = 5 -> + 0.5
    assert float(stats.loss) == pytest.approx((LOG1P_E_MINUS_1 + LOG1P_E) / 2 + 0.5)


def test_ties_do_not_count_as_correct():
    assert pairwise_loss(torch.tensor([1.0]), torch.tensor([1.0])).accuracy == 0.0


def test_loss_gradient_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([0.0], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    pairwise_loss(chosen, rejected).loss.backward()
    assert chosen.grad.item() == pytest.approx(-0.5)  # d/dc -logsigmoid(c - r) = -(1 - sigmoid(0))
    assert rejected.grad.item() == pytest.approx(0.5)


def test_last_token_index_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_response_end():
    prompt, response = [1, 2, 3, 4, 5], [6, 7, 8]
    assert truncate_keep_response_end(prompt, response, 100) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert truncate_keep_response_end(prompt, response, 5) == [4, 5, 6, 7, 8]
    assert truncate_keep_response_end(prompt, response, 3) == [6, 7, 8]
    assert truncate_keep_response_end(prompt, response, 2) == [7, 8]  # response alone too long: keep its end


def test_metrics_from_sums_match_the_tensor_statistics_and_combine_across_workers():
    pairs = [(2.0, 1.0), (0.0, 1.0), (3.0, -1.0)]
    whole = metrics_from_sums(pair_sums(pairs))
    first, second = pair_sums(pairs[:2]), pair_sums(pairs[2:])
    combined = metrics_from_sums({key: first[key] + second[key] for key in first})
    stats = pairwise_loss(torch.tensor([2.0, 0.0, 3.0]), torch.tensor([1.0, 1.0, -1.0]))
    for metrics in (whole, combined):
        assert metrics["loss"] == pytest.approx(float(stats.loss))
        assert metrics["accuracy"] == pytest.approx(2 / 3)
        assert metrics["margin"] == pytest.approx(stats.reward_margin)
        assert metrics["chosen_reward_std"] == pytest.approx(stats.chosen_reward_std)
        assert metrics["rejected_reward_std"] == pytest.approx(stats.rejected_reward_std)
        assert metrics["reward_mean"] == pytest.approx(1.0)  # (2+1+0+1+3-1)/6
        assert metrics["reward_std"] == pytest.approx(reward_stats([2, 1, 0, 1, 3, -1])["std"])
        assert metrics["pairs"] == 3


def test_reward_stats_population_std():
    assert reward_stats([1.0, 3.0]) == {"mean": 2.0, "std": 1.0, "count": 2}
    assert reward_stats([]) == {"mean": 0.0, "std": 1.0, "count": 0}
