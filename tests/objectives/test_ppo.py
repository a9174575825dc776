"""Golden-value tests of the PPO math on hand-made tensors (values worked out by hand in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfctl.objectives import ppo as pm


def close(actual, expected, tol=1e-5):
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert torch.allclose(actual, expected, atol=tol, rtol=0), f"{actual} != {expected}"


# ----------------------------------------------------------------------------------------------- log-probs


def test_logprobs_use_the_causal_shift_and_temperature():
    # vocab 3, prompt of 2 tokens, response of 2 tokens. Logits at position t score token t+1.
    query_responses = torch.tensor([[0, 1, 2, 0]])
    logits = torch.zeros(1, 4, 3)
    logits[0, 1] = torch.tensor([0.0, 0.0, 2.0])  # scores token at position 2 (= 2)
    logits[0, 2] = torch.tensor([4.0, 0.0, 0.0])  # scores token at position 3 (= 0)
    logits[0, 3] = torch.tensor([100.0, -100.0, 0.0])  # past the end: must be ignored

    logprobs = pm.logprobs_from_logits(logits, query_responses, prompt_len=2, temperature=2.0)

    # temperature 2: [0, 0, 1] -> log(e / (2 + e)); [2, 0, 0] -> log(e^2 / (e^2 + 2))
    expected = [[1 - math.log(2 + math.e), 2 - math.log(math.e**2 + 2)]]
    close(logprobs, expected)
    assert logprobs.shape == (1, 2)


def test_logprobs_without_temperature_match_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    expected = torch.log_softmax(logits[:, 2:4], -1).gather(2, ids[:, 3:].unsqueeze(-1)).squeeze(-1)
    close(pm.logprobs_from_logits(logits, ids, prompt_len=3), expected)


def test_entropy_of_uniform_and_peaked_distributions():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e9, -1e9]]])
    # uniform over 4: log 4; probs [1/4, 3/4]: -(1/4 log 1/4 + 3/4 log 3/4)
    expected = [[math.log(4), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]]
    close(pm.entropy_from_logits(logits), expected)


def test_logprobs_and_entropy_in_one_pass_hand_computed():
    # the first test's case: temperature 2 turns the scoring logits into [0, 0, 1] and [2, 0, 0]
    query_responses = torch.tensor([[0, 1, 2, 0]])
    logits = torch.zeros(1, 4, 3)
    logits[0, 1] = torch.tensor([0.0, 0.0, 2.0])
    logits[0, 2] = torch.tensor([4.0, 0.0, 0.0])
    logits[0, 3] = torch.tensor([100.0, -100.0, 0.0])  # past the end: ignored
    logprobs, entropy = pm.logprobs_and_entropy_from_logits(logits, query_responses, prompt_len=2, temperature=2.0)

    def entropy_of(z):  # -sum p log p, by hand
        total = sum(math.exp(v) for v in z)
        return -sum(math.exp(v) / total * (v - math.log(total)) for v in z)

    close(logprobs, [[1 - math.log(2 + math.e), 2 - math.log(math.e**2 + 2)]])
    close(entropy, [[entropy_of([0, 0, 1]), entropy_of([2, 0, 0])]])


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_logprobs_and_entropy_in_one_pass_match_the_separate_functions_values_and_gradients(entropy_grad):
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 6, 11)).requires_grad_()
    ids = torch.randint(0, 11, (3, 6))
    logprobs, entropy = pm.logprobs_and_entropy_from_logits(logits, ids, 2, 0.7, entropy_grad=entropy_grad)
    expected_logprobs = pm.logprobs_from_logits(logits, ids, 2, 0.7)
    expected_entropy = pm.entropy_from_logits(logits[:, 1:-1] / 0.7)
    assert torch.equal(logprobs, expected_logprobs)  # the same operations: bit for bit (the loss is unchanged)
    close(entropy, expected_entropy)
    assert entropy.requires_grad is entropy_grad
    weights = torch.randn(3, 4)
    total = (weights * logprobs).sum() + (entropy.sum() if entropy_grad else 0)
    expected_total = (weights * expected_logprobs).sum() + (expected_entropy.sum() if entropy_grad else 0)
    (grad,) = torch.autograd.grad(total, logits)
    (expected_grad,) = torch.autograd.grad(expected_total, logits)
    close(grad, expected_grad)


# ----------------------------------------------------------------------------------------------- masks


def test_truncation_after_the_first_stop_token():
    eos, pad = 9, 0
    responses = torch.tensor(
        [
            [5, 9, 7, 9],  # stop in the middle: keep [5, 9]
            [5, 6, 7, 9],  # stop at the end
            [5, 6, 7, 8],  # no stop at all
            [9, 5, 5, 5],  # stop first
        ]
    )
    out = pm.truncate_after_stop(responses, [eos], pad)
    assert out.response_ids.tolist() == [[5, 9, 0, 0], [5, 6, 7, 9], [5, 6, 7, 8], [9, 0, 0, 0]]
    assert out.response_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert out.has_stop.tolist() == [True, True, False, True]
    assert out.lengths.tolist() == [2, 4, 4, 1]


def test_truncation_never_trusts_pad_when_pad_equals_eos():
    # pad == eos: the padding written after the stop token must not move the mask.
    out = pm.truncate_after_stop(torch.tensor([[4, 2, 2, 2], [4, 4, 4, 4]]), [2], pad_token_id=2)
    assert out.response_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert out.has_stop.tolist() == [True, False]


def test_truncation_with_several_stop_tokens():
    out = pm.truncate_after_stop(torch.tensor([[4, 7, 3, 2]]), [2, 3], pad_token_id=0)
    assert out.response_ids.tolist() == [[4, 7, 3, 0]]


# ----------------------------------------------------------------------------------------------- statistics


def test_masked_mean_var_whiten():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, -50.0, -50.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # real values: 1, 2, 3, 5 -> mean 2.75; squared deviations 3.0625 + 0.5625 + 0.0625 + 5.0625 = 8.75
    close(pm.masked_mean(values, mask), 2.75)
    close(pm.masked_mean(values, mask, dim=1), [2.0, 5.0])
    close(pm.masked_var(values, mask, unbiased=False), 8.75 / 4)
    close(pm.masked_var(values, mask), 8.75 / 3)
    whitened = pm.masked_whiten(values, mask)
    std = math.sqrt(8.75 / 3 + 1e-8)
    close(whitened, [[(1 - 2.75) / std, (2 - 2.75) / std, (3 - 2.75) / std, 0.0], [(5 - 2.75) / std, 0, 0, 0]])
    close(pm.masked_mean(whitened, mask), 0.0)
    close(pm.masked_var(whitened, mask), 1.0, tol=1e-4)
    kept_mean = pm.masked_whiten(values, mask, shift_mean=False)
    close(kept_mean[0, 0], (1 - 2.75) / std + 2.75)


# ----------------------------------------------------------------------------------------------- rewards


def test_kl_estimators():
    logprobs = torch.tensor([[math.log(0.5), math.log(0.2)]])
    ref_logprobs = torch.tensor([[math.log(0.25), math.log(0.4)]])
    # k1 = log p - log q: log 2, log 0.5;  k3 = q/p - 1 - log(q/p): (0.5 - 1 + log 2), (2 - 1 - log 2)
    close(pm.kl_per_token(logprobs, ref_logprobs, "k1"), [[math.log(2), -math.log(2)]])
    close(pm.kl_per_token(logprobs, ref_logprobs, "k3"), [[-0.5 + math.log(2), 1 - math.log(2)]])
    close(pm.kl_per_token(logprobs, logprobs, "k3"), [[0.0, 0.0]])
    with pytest.raises(ValueError):
        pm.kl_per_token(logprobs, ref_logprobs, "k2")


def test_rewards_score_on_last_real_token_with_stop_in_the_middle_and_at_the_end():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # EOS at index 1, EOS at the end
    scores = torch.tensor([2.0, -1.0])
    rewards = pm.per_token_rewards(scores, kl, mask, kl_coef=0.5)
    close(rewards, [[-0.05, -0.1 + 2.0, 0.0, 0.0], [-0.05, -0.1, -0.15, -0.2 - 1.0]])


def test_process_scores_order_normalise_clip_penalise():
    scores = torch.tensor([3.0, -9.0, 1.0])
    has_stop = torch.tensor([True, True, False])
    out = pm.process_scores(
        scores, has_stop, reward_mean=1.0, reward_std=2.0, score_clip=2.0, missing_eos_penalty=0.5
    )
    # normalised: 1, -5, 0 -> clipped: 1, -2, 0 -> penalty on the third: -0.5
    close(out, [1.0, -2.0, -0.5])
    close(pm.process_scores(scores, has_stop), scores)


# ----------------------------------------------------------------------------------------------- GAE


def test_gae_matches_hand_unrolled_computation():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0, 0.0, 2.0, 7.0]])
    values = torch.tensor([[0.5, 1.0, 1.5, 9.0]])  # last position is padding: its value must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    advantages, returns = pm.gae_advantages(rewards, values, mask, gamma, lam)
    d2 = 2.0 + gamma * 0.0 - 1.5  # terminal after the last real token
    d1 = 0.0 + gamma * 1.5 - 1.0
    d0 = 1.0 + gamma * 1.0 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    close(advantages, [[a0, a1, a2, 0.0]])
    close(returns, [[a0 + 0.5, a1 + 1.0, a2 + 1.5, 0.0]])


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.1, 0.2, 3.0], [1.0, 0.0, 0.0]])
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    advantages, returns = pm.gae_advantages(rewards, values, mask, 1.0, 1.0)
    close(returns, [[3.3, 3.2, 3.0], [1.0, 0.0, 0.0]])
    close(advantages, [[2.3, 1.2, 0.0], [-3.0, 0.0, 0.0]])


# ----------------------------------------------------------------------------------------------- losses


def test_clipped_policy_loss():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 3.0]]))
    advantages = torch.tensor([[1.0, 1.0, -2.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = pm.clipped_policy_loss(new, old, advantages, mask, cliprange=0.2)
    # token 0: ratio 1.5, A=1: max(-1.5, -1.2) = -1.2 (clipped)
    # token 1: ratio 0.5, A=1: max(-0.5, -0.8) = -0.5 (unclipped)
    # token 2: ratio 1.1, A=-2: max(2.2, 2.2) = 2.2 (inside the range)
    close(out.loss, (-1.2 - 0.5 + 2.2) / 3)
    close(out.clip_fraction, 1 / 3)
    close(out.ratio_mean, (1.5 + 0.5 + 1.1) / 3)
    close(out.approx_kl, 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 3)


def test_clipped_policy_loss_gradient_is_zero_where_clipped():
    new = torch.log(torch.tensor([[1.5, 0.9]])).requires_grad_()
    out = pm.clipped_policy_loss(new, torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2), 0.2)
    out.loss.backward()
    # d/dlogp of -A * ratio / 2 = -ratio / 2 where unclipped
    close(new.grad, [[0.0, -0.45]])


def test_clipped_value_loss():
    old_values = torch.tensor([[1.0, 1.0, 1.0]])
    values = torch.tensor([[2.0, 1.1, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = pm.clipped_value_loss(values, old_values, returns, mask, cliprange_value=0.2)
    # token 0: unclipped (2-2)^2 = 0, clipped (1.2-2)^2 = 0.64 -> 0.64 (clipped active)
    # token 1: unclipped (1.1-0)^2 = 1.21, clipped 1.1 inside -> 1.21
    close(out.loss, 0.5 * (0.64 + 1.21) / 2)
    close(out.clip_fraction, 0.5)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert pm.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert pm.explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)
    # residuals (1, 0, 1): mean 2/3, variance 2/9; variance of the returns (1, 2, 3): 2/3
    values = returns - torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert pm.explained_variance(values, returns, mask) == pytest.approx(1 - (2 / 9) / (2 / 3))
    assert math.isnan(pm.explained_variance(returns, torch.ones(1, 4), mask))


# ----------------------------------------------------------------------------------------------- KL controller


def test_fixed_kl_controller_never_moves():
    controller = pm.KLController(0.05)
    assert controller.update(100.0, 64) == 0.05


def test_adaptive_kl_controller():
    controller = pm.KLController(0.1, target=6.0, horizon=100)
    # kl 9 -> error 0.5 clipped to 0.2 -> 0.1 * (1 + 0.2 * 10/100) = 0.102
    assert controller.update(9.0, 10) == pytest.approx(0.102)
    # kl 5.4 -> error -0.1 -> 0.102 * (1 - 0.1 * 50/100) = 0.0969
    assert controller.update(5.4, 50) == pytest.approx(0.0969)
    # kl 0 -> error -1 clipped to -0.2
    assert controller.update(0.0, 100) == pytest.approx(0.0969 * 0.8)
    restored = pm.KLController(1.0)
    restored.load_state_dict(controller.state_dict())
    assert restored == controller
    assert restored.update(float("nan"), 10) == restored.value


def test_kl_controller_at_the_template_defaults():
    # kl_coeff 0.05, target_kl 2.5, kl_horizon 256; 2 workers x 8 prompts = 16 episodes per iteration
    controller = pm.KLController(0.05, target=2.5, horizon=256)
    # KL 3.0: error 3 / 2.5 - 1 = 0.2 -> 0.05 * (1 + 0.2 * 16 / 256) = 0.050625
    assert controller.update(3.0, 16) == pytest.approx(0.050625)
    # KL on target: no change
    assert controller.update(2.5, 16) == pytest.approx(0.050625)
    # KL 2.25: error -0.1 -> 0.050625 * (1 - 0.1 * 16 / 256) = 0.050308593750
    assert controller.update(2.25, 16) == pytest.approx(0.05030859375)
    # 128 iterations (2,048 episodes) far above the target: at most (1 + 0.2 / 16) ** 128 = 4.9 times the start
    runaway = pm.KLController(0.05, target=2.5, horizon=256)
    for _ in range(128):
        runaway.update(100.0, 16)
    assert runaway.value == pytest.approx(0.05 * 1.0125**128) and runaway.value < 0.05 * math.exp(0.2 * 2048 / 256)
