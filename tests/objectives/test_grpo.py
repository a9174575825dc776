"""Golden-value tests of the GRPO / RLOO math (hand-computed numbers)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfctl.objectives.grpo import STD_EPSILON, group_advantages, grpo_loss


def test_group_relative_advantages_scaled_by_the_group_std():
    # group 1: [1, 0] mean 0.5, Bessel std sqrt(0.25 + 0.25) = 0.7071068; group 2: [0.5, 0.5] std 0 -> advantage 0
    result = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), 2)
    scale = 0.5 / (math.sqrt(0.5) + STD_EPSILON)  # 0.70700680
    assert result.advantages.tolist() == pytest.approx([scale, -scale, 0.0, 0.0])
    assert result.group_std.tolist() == pytest.approx([math.sqrt(0.5), 0.0])
    assert result.group_mean.tolist() == pytest.approx([0.5, 0.5])
    unscaled = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), 2, scale_rewards=False)
    assert unscaled.advantages.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])


def test_rloo_uses_the_mean_of_the_other_completions():
    rewards = torch.tensor([3.0, 0.0, 0.0])
    rloo = group_advantages(rewards, 3, scale_rewards=False, leave_one_out=True)
    # 3 - mean(0, 0) = 3; 0 - mean(3, 0) = -1.5 (twice)
    assert rloo.advantages.tolist() == pytest.approx([3.0, -1.5, -1.5])
    grpo = group_advantages(rewards, 3, scale_rewards=False)
    assert grpo.advantages.tolist() == pytest.approx([2.0, -1.0, -1.0])  # against the group mean 1
    # RLOO's advantage is G / (G - 1) times GRPO's
    assert torch.allclose(rloo.advantages, grpo.advantages * 3 / 2)
    scaled = group_advantages(rewards, 3, leave_one_out=True)  # std sqrt((4 + 1 + 1) / 2) = sqrt(3)
    assert scaled.advantages.tolist() == pytest.approx([3 / (math.sqrt(3) + STD_EPSILON),
                                                        -1.5 / (math.sqrt(3) + STD_EPSILON)] + [
                                                        -1.5 / (math.sqrt(3) + STD_EPSILON)])


# Two completions. Row 1: ratios (1, e^0.5 = 1.6487), advantage +2 -> per token -min(2, 2) = -2 and
# -min(3.2974, 1.2 * 2 = 2.4) = -2.4 (clipped). Row 2: one real token, ratio e^-0.2 = 0.8187 (inside the clip
# range), advantage -1 -> +0.8187307531; its padding token is masked out.
LOGPROBS = torch.tensor([[-1.0, -2.0], [-0.3, 0.0]])
OLD = torch.tensor([[-1.0, -2.5], [-0.1, 0.0]])
ADVANTAGES = torch.tensor([2.0, -1.0])
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
ROW2 = math.exp(-0.2)


def test_clipped_surrogate_token_and_sequence_aggregation():
    token = grpo_loss(LOGPROBS, OLD, ADVANTAGES, MASK, epsilon=0.2)
    assert float(token.loss) == pytest.approx((-2.0 - 2.4 + ROW2) / 3)  # -1.1937564156
    assert float(token.clip_fraction) == pytest.approx(1 / 3)
    assert float(token.kl) == 0.0
    assert float(token.ratio_mean) == pytest.approx((1 + math.exp(0.5) + ROW2) / 3)
    sequence = grpo_loss(LOGPROBS, OLD, ADVANTAGES, MASK, epsilon=0.2, aggregation="sequence")
    assert float(sequence.loss) == pytest.approx((-2.2 + ROW2) / 2)  # per-row means -2.2 and 0.8187, then mean
    # as one micro-batch of a larger mini-batch: divided by the mini-batch's counts instead
    assert float(grpo_loss(LOGPROBS, OLD, ADVANTAGES, MASK, epsilon=0.2, normalizer=6.0).loss) == pytest.approx(
        (-2.0 - 2.4 + ROW2) / 6)


def test_k3_kl_to_the_reference_is_added_per_token():
    reference = torch.tensor([[-1.5, -2.0], [-0.3, 5.0]])
    result = grpo_loss(LOGPROBS, OLD, ADVANTAGES, MASK, epsilon=0.2, beta=0.1, ref_logprobs=reference)
    k3 = math.exp(-0.5) + 0.5 - 1  # ref - logp = -0.5 on row 1's first token: 0.1065306597; 0 elsewhere
    assert float(result.loss) == pytest.approx((-2.0 + 0.1 * k3 - 2.4 + ROW2) / 3)
    assert float(result.kl) == pytest.approx(k3 / 3)  # the padding token's huge ratio is masked out
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(LOGPROBS, OLD, ADVANTAGES, MASK, epsilon=0.2, beta=0.1)


def test_on_policy_gradient_is_the_advantage_weighted_log_prob_gradient():
    """With old == current (one pass, one mini-batch), d loss / d logp_t = -A / tokens: plain policy gradient."""
    logprobs = LOGPROBS.clone().requires_grad_(True)
    grpo_loss(logprobs, LOGPROBS, ADVANTAGES, MASK, epsilon=0.2).loss.backward()
    assert logprobs.grad.flatten().tolist() == pytest.approx([-2 / 3, -2 / 3, 1 / 3, 0.0])
