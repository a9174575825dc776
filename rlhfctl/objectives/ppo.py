"""The PPO math as small pure tensor functions, each tested against hand-computed values.

Conventions (one rollout batch, prompts left-padded to a common ``prompt_len``, responses right-padded):

- ``query_responses`` ``(batch, prompt_len + response_len)``: prompt tokens then response tokens.
- ``response_mask`` ``(batch, response_len)``: 1.0 on real response tokens (up to and including the first stop
  token), 0.0 on the padding after it. Masks are float tensors and always explicit arguments.
- Per-token quantities (log-probs, values, rewards, advantages) are ``(batch, response_len)`` and belong to the
  response token at that position; the value at position ``t`` is the value of the state *before* token ``t``.

References:
- [TRL] Hugging Face TRL ``PPOTrainer`` (trl 0.11-1.12, ``trl/trainer/ppo_trainer.py``, ``trl/trainer/utils.py``),
  itself following Huang et al., "The N+ implementation details of RLHF with PPO" (2024).
- [Ziegler] Ziegler et al., "Fine-Tuning Language Models from Human Preferences" (2019): per-token KL penalty,
  score on the last token, adaptive KL coefficient.
- [GAE] Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage Estimation" (2016).
- [PPO] Schulman et al., "Proximal Policy Optimization Algorithms" (2017).
- [KL] Schulman, "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html, 2020): k1 and k3.
- [torchtune] pytorch/torchtune ``torchtune/rlhf/rewards.py`` and ``torchtune/rlhf/loss/ppo.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # torch is imported lazily by every function; annotations only here
    import torch


# ----------------------------------------------------------------------------------------------- log-probs


def logprobs_from_logits(
    logits: "torch.Tensor", query_responses: "torch.Tensor", prompt_len: int, temperature: float = 1.0
) -> "torch.Tensor":
    """Log-probability of each response token under ``logits`` (the causal shift and temperature applied).

    Args:
        logits: ``(batch, seq_len, vocab)`` from one forward pass over ``query_responses``; the logits at position
            ``t`` score the token at ``t + 1``.
        query_responses: ``(batch, seq_len)`` token ids, the response starting at ``prompt_len``.
        prompt_len: length of the (left-padded) prompt block.
        temperature: the sampling temperature; logits are divided by it so the log-probs are those of the
            distribution the tokens were sampled from [TRL].

    Returns:
        ``(batch, response_len)`` log-probs of the chosen tokens only (full-vocabulary values are never kept: a
        block of positions at a time, :mod:`rlhfctl.objectives.token_logprobs`).
    """
    from rlhfctl.objectives.token_logprobs import token_logprobs_and_entropy

    return token_logprobs_and_entropy(logits, query_responses[:, prompt_len:], prompt_len - 1, temperature,
                                      with_entropy=False)[0]


def logprobs_and_entropy_from_logits(
    logits: "torch.Tensor", query_responses: "torch.Tensor", prompt_len: int, temperature: float = 1.0, *,
    entropy_grad: bool = False,
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """:func:`logprobs_from_logits` (the same values, computed the same way) and the per-token entropy of the same
    tempered distribution, ``(batch, response_len)`` each, sharing one log-normaliser: the entropy is
    ``logsumexp(z) - sum(softmax(z) * z)`` with ``softmax(z) = exp(z - logsumexp(z))``. The entropy carries
    gradients only with ``entropy_grad``.

    Both are computed a block of positions at a time, and their backward recomputes each block's softmax
    (:mod:`rlhfctl.objectives.token_logprobs`): no full-vocabulary copy of the logits is kept for the backward
    or made while the entropy is summed."""
    from rlhfctl.objectives.token_logprobs import token_logprobs_and_entropy

    return token_logprobs_and_entropy(logits, query_responses[:, prompt_len:], prompt_len - 1, temperature,
                                      entropy_grad=entropy_grad)


def entropy_from_logits(logits: "torch.Tensor") -> "torch.Tensor":
    """Entropy of the categorical distribution at each position: ``(batch, len, vocab) -> (batch, len)`` [TRL]."""
    import torch

    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


# ----------------------------------------------------------------------------------------------- masks


class TruncatedResponses(NamedTuple):
    """Responses cut after their first stop token."""

    response_ids: "torch.Tensor"  # (batch, response_len) ids, pad_token_id after the first stop token
    response_mask: "torch.Tensor"  # (batch, response_len) float, 1.0 up to and including the first stop token
    has_stop: "torch.Tensor"  # (batch,) bool, whether the response emitted a stop token at all
    lengths: "torch.Tensor"  # (batch,) long, number of real response tokens (>= 1)


def truncate_after_stop(
    response_ids: "torch.Tensor", stop_token_ids: list[int], pad_token_id: int
) -> TruncatedResponses:
    """Keep each response up to and including its first stop token; everything after becomes padding [TRL].

    The mask is computed from the position of the first stop token, never from ``pad_token_id``, so a tokenizer
    whose pad token equals its EOS token cannot corrupt it.

    Args:
        response_ids: ``(batch, response_len)`` generated token ids.
        stop_token_ids: ids that end a response (EOS and/or the configured stop token).
        pad_token_id: id written after the stop token.
    """
    import torch

    batch, response_len = response_ids.shape
    is_stop = torch.zeros_like(response_ids, dtype=torch.bool)
    for token_id in stop_token_ids:
        is_stop |= response_ids == token_id
    has_stop = is_stop.any(dim=1)
    # index of the first stop token, response_len when there is none
    positions = torch.arange(response_len, device=response_ids.device).expand(batch, response_len)
    first_stop = torch.where(is_stop, positions, torch.full_like(positions, response_len)).min(dim=1).values
    lengths = torch.where(has_stop, first_stop + 1, torch.full_like(first_stop, response_len))
    keep = positions < lengths.unsqueeze(1)  # (batch, response_len)
    truncated = torch.where(keep, response_ids, torch.full_like(response_ids, pad_token_id))
    return TruncatedResponses(truncated, keep.float(), has_stop, lengths)


# ----------------------------------------------------------------------------------------------- masked statistics


def masked_mean(values: "torch.Tensor", mask: "torch.Tensor", dim: int | None = None) -> "torch.Tensor":
    """Mean of ``values`` over positions where ``mask`` is 1 (over everything, or along ``dim``) [TRL]."""
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim=dim) / mask.sum(dim=dim).clamp(min=1.0)


def masked_var(values: "torch.Tensor", mask: "torch.Tensor", unbiased: bool = True) -> "torch.Tensor":
    """Variance of ``values`` over masked-in positions, with Bessel's correction when ``unbiased`` [TRL]."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count > 1:
            variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: "torch.Tensor", mask: "torch.Tensor", shift_mean: bool = True) -> "torch.Tensor":
    """Whiten ``values`` with the mean/variance of the masked-in positions; masked-out positions become 0.

    ``shift_mean=False`` rescales only (adds the mean back), as used for rewards [TRL]. Shapes: any, equal.
    """
    import torch

    mean = masked_mean(values, mask)
    variance = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# ----------------------------------------------------------------------------------------------- rewards


def kl_per_token(logprobs: "torch.Tensor", ref_logprobs: "torch.Tensor", estimator: str = "k1") -> "torch.Tensor":
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probs [KL].

    ``k1 = log p - log q`` (unbiased, can be negative); ``k3 = (q/p - 1) - log(q/p)`` (unbiased, always >= 0), with
    ``p`` the policy and ``q`` the reference. Shapes: ``(batch, response_len)`` in and out.
    """
    log_ratio = ref_logprobs - logprobs  # log(q/p)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return log_ratio.exp() - 1 - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1' or 'k3'")


def process_scores(
    scores: "torch.Tensor",
    has_stop: "torch.Tensor",
    *,
    reward_mean: float | None = None,
    reward_std: float | None = None,
    score_clip: float | None = None,
    missing_eos_penalty: float | None = None,
) -> "torch.Tensor":
    """Raw reward-model scores -> the scores PPO optimises, in this order:

    1. normalise ``(score - reward_mean) / reward_std`` when the RM's statistics are given;
    2. clip to ``[-score_clip, score_clip]``;
    3. subtract ``missing_eos_penalty`` from responses that never emitted a stop token [TRL].

    Shapes: ``scores`` ``(batch,)`` float, ``has_stop`` ``(batch,)`` bool.
    """
    if reward_mean is not None and reward_std is not None:
        scores = (scores - reward_mean) / max(reward_std, 1e-8)
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    if missing_eos_penalty is not None:
        scores = scores - missing_eos_penalty * (~has_stop).to(scores.dtype)
    return scores


def per_token_rewards(
    scores: "torch.Tensor", kl: "torch.Tensor", response_mask: "torch.Tensor", kl_coef: float
) -> "torch.Tensor":
    """Per-token rewards: ``-kl_coef * kl_t`` on every response token plus the score on the last real one [Ziegler].

    Args:
        scores: ``(batch,)`` sequence scores.
        kl: ``(batch, response_len)`` per-token KL estimates.
        response_mask: ``(batch, response_len)``; the last 1.0 of each row receives the score (never the padding
            after it).

    Returns:
        ``(batch, response_len)`` rewards, 0 on padding.
    """
    import torch

    rewards = -kl_coef * kl * response_mask
    last_index = (response_mask.sum(dim=1).long() - 1).clamp(min=0)  # (batch,)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_index] += scores.to(rewards.dtype)
    return rewards


# ----------------------------------------------------------------------------------------------- advantages


def gae_advantages(
    rewards: "torch.Tensor", values: "torch.Tensor", response_mask: "torch.Tensor", gamma: float, lam: float
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Generalised advantage estimation over the response, masked [GAE][TRL].

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, where ``V`` and ``A``
    beyond the last real token are 0 (the episode ends there). Returns ``(advantages, returns)``, both
    ``(batch, response_len)`` and 0 on padding; ``returns = advantages + values``.
    """
    import torch

    values = values * response_mask
    rewards = rewards * response_mask
    response_len = rewards.shape[1]
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    advantages_reversed = []
    for t in reversed(range(response_len)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = (delta + gamma * lam * next_advantage) * response_mask[:, t]
        advantages_reversed.append(advantage)
        next_advantage = advantage
        next_value = values[:, t]
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    returns = (advantages + values) * response_mask
    return advantages, returns


# ----------------------------------------------------------------------------------------------- losses


class PolicyLoss(NamedTuple):
    loss: "torch.Tensor"  # scalar, differentiable
    clip_fraction: "torch.Tensor"  # scalar, share of tokens where the clipped objective was active
    approx_kl: "torch.Tensor"  # scalar, 0.5 * mean((log p_new - log p_old)^2)
    ratio_mean: "torch.Tensor"  # scalar, mean of p_new / p_old


def clipped_policy_loss(
    logprobs: "torch.Tensor",
    old_logprobs: "torch.Tensor",
    advantages: "torch.Tensor",
    response_mask: "torch.Tensor",
    cliprange: float,
) -> PolicyLoss:
    """PPO's clipped surrogate objective as a loss to minimise [PPO][TRL].

    ``loss = mean_t max(-A_t * r_t, -A_t * clip(r_t, 1 - eps, 1 + eps))`` with ``r_t = exp(logp_t - old_logp_t)``,
    averaged over real tokens. All tensors ``(batch, response_len)``.
    """
    import torch

    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), response_mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), response_mask)
        approx_kl = 0.5 * masked_mean(log_ratio**2, response_mask)
        ratio_mean = masked_mean(ratio, response_mask)
    return PolicyLoss(loss, clip_fraction, approx_kl, ratio_mean)


class ValueLoss(NamedTuple):
    loss: "torch.Tensor"  # scalar, differentiable
    clip_fraction: "torch.Tensor"  # scalar, share of tokens where the clipped loss was larger


def clipped_value_loss(
    values: "torch.Tensor",
    old_values: "torch.Tensor",
    returns: "torch.Tensor",
    response_mask: "torch.Tensor",
    cliprange_value: float,
) -> ValueLoss:
    """Clipped value loss ``0.5 * mean_t max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)`` [TRL].

    All tensors ``(batch, response_len)``.
    """
    import torch

    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), response_mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_loss > unclipped_loss).float(), response_mask)
    return ValueLoss(loss, clip_fraction)


def explained_variance(values: "torch.Tensor", returns: "torch.Tensor", mask: "torch.Tensor") -> float:
    """``1 - Var(returns - values) / Var(returns)`` over masked-in positions (1 = perfect critic, <= 0 = useless).

    Returns ``nan`` when the returns have no variance. Shapes: ``(batch, response_len)``.
    """
    variance = masked_var(returns, mask, unbiased=False).item()
    if variance <= 0:
        return math.nan
    return 1.0 - masked_var(returns - values, mask, unbiased=False).item() / variance


# ----------------------------------------------------------------------------------------------- KL controller


@dataclass
class KLController:
    """The KL coefficient: fixed, or adapted toward ``target`` KL per sequence [Ziegler].

    The adaptive update is ``coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_episodes / horizon``. Its state is a
    plain dict so it goes into checkpoints as JSON.
    """

    value: float
    target: float | None = None
    horizon: int = 10000

    def update(self, current_kl: float, n_episodes: int) -> float:
        """Adapt toward the target given the KL measured on ``n_episodes`` rollouts; returns the new value."""
        if self.target is None or not math.isfinite(current_kl):
            return self.value
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_episodes / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.target = None if state.get("target") is None else float(state["target"])
        self.horizon = int(state["horizon"])
