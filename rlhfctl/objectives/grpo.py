"""Group-relative policy optimisation (GRPO) and RLOO as small pure functions (tests/objectives/test_grpo.py).

A batch holds ``groups`` prompts with ``G = num_generations`` sampled completions each, consecutive: completion
``i`` belongs to group ``i // G``. There is no value model: a completion's advantage is its reward relative to
the others of its group, one number for every token of the completion.

- advantage [GRPO]: ``(r_i - mean(group)) / (std(group) + 1e-4)``, the division only with ``scale_rewards``;
  ``std`` with Bessel's correction, as TRL's ``nanstd``.
- advantage [RLOO]: ``r_i - mean(others in the group)`` (leave-one-out baseline), divided by the group std the
  same way with ``scale_rewards``.
- per-token loss [GRPO][TRL]: ``-min(ratio_t * A, clip(ratio_t, 1 - eps, 1 + eps) * A) + beta * k3_t`` with
  ``ratio_t = exp(log pi_t - log pi_old_t)`` and ``k3_t = exp(ref_t - log pi_t) - (ref_t - log pi_t) - 1``
  ([KL]; ``beta = 0``: no KL term and no reference model).
- aggregation: ``"token"`` sums over every real token and divides by their number (TRL's ``dapo``/``bnpo``);
  ``"sequence"`` averages per completion, then over completions (the GRPO paper, TRL's ``grpo``).

References:
- [GRPO] Shao et al., "DeepSeekMath" (2024), eq. 3 and section 4.1.2 (outcome supervision).
- [RLOO] Ahmadian et al., "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
  Feedback in LLMs" (2024), eq. 4.
- [DAPO] Yu et al., "DAPO" (2025): token-level loss aggregation.
- [TRL] Hugging Face TRL ``GRPOTrainer`` (trl 1.16, ``_generate_and_score_completions`` and ``_compute_loss``) and
  ``RLOOTrainer`` (the leave-one-out baseline).
- [KL] Schulman, "Approximating KL Divergence" (2020): the k3 estimator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from rlhfctl.objectives.ppo import kl_per_token, masked_mean

if TYPE_CHECKING:  # torch is imported lazily by every function; annotations only here
    import torch

STD_EPSILON = 1e-4  # TRL's: keeps a group whose rewards are all equal at advantage 0 instead of 0/0


class GroupAdvantages(NamedTuple):
    advantages: "torch.Tensor"  # (groups * G,) one per completion
    group_std: "torch.Tensor"  # (groups,) reward std of each group (Bessel-corrected)
    group_mean: "torch.Tensor"  # (groups,)


def group_advantages(
    rewards: "torch.Tensor", num_generations: int, *, scale_rewards: bool = True, leave_one_out: bool = False
) -> GroupAdvantages:
    """Group-relative advantages of ``rewards`` ``(groups * G,)`` (completions of a prompt consecutive)."""
    grouped = rewards.float().view(-1, num_generations)  # (groups, G)
    group_mean = grouped.mean(dim=1, keepdim=True)
    group_std = grouped.std(dim=1, unbiased=True, keepdim=True)
    if leave_one_out:
        baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (num_generations - 1)
    else:
        baseline = group_mean
    advantages = grouped - baseline
    if scale_rewards:
        advantages = advantages / (group_std + STD_EPSILON)
    return GroupAdvantages(advantages.reshape(-1), group_std.squeeze(1), group_mean.squeeze(1))


class GRPOLoss(NamedTuple):
    loss: "torch.Tensor"  # scalar, differentiable
    clip_fraction: "torch.Tensor"  # scalar: share of tokens whose ratio was clipped where it mattered
    kl: "torch.Tensor"  # scalar: mean k3 per token (0 without a reference)
    ratio_mean: "torch.Tensor"  # scalar: mean of pi / pi_old over tokens


def grpo_loss(
    logprobs: "torch.Tensor",
    old_logprobs: "torch.Tensor",
    advantages: "torch.Tensor",
    response_mask: "torch.Tensor",
    *,
    epsilon: float,
    beta: float = 0.0,
    ref_logprobs: "torch.Tensor | None" = None,
    aggregation: str = "token",
    normalizer: float | None = None,
) -> GRPOLoss:
    """The clipped surrogate plus ``beta`` times the k3 KL, aggregated per token or per sequence.

    Args:
        logprobs: ``(batch, response_len)`` current policy log-probs (with gradients).
        old_logprobs: ``(batch, response_len)`` log-probs of the policy that sampled the completions (constant).
        advantages: ``(batch,)`` one per completion (:func:`group_advantages`).
        response_mask: ``(batch, response_len)`` float, 1.0 on real response tokens.
        ref_logprobs: ``(batch, response_len)`` reference log-probs; required when ``beta > 0``.
        normalizer: what the summed loss is divided by, when this batch is one micro-batch of a larger
            mini-batch: the mini-batch's real token count (``"token"``) or completion count (``"sequence"``).
            Default: this batch's own count.
    """
    import torch

    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    per_advantage = advantages.to(logprobs.dtype)[:, None]  # (batch, 1): every token of a completion alike
    unclipped = ratio * per_advantage
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon) * per_advantage
    per_token = -torch.min(unclipped, clipped)
    kl = torch.zeros_like(per_token)
    if beta:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        kl = kl_per_token(logprobs, ref_logprobs, "k3")
        per_token = per_token + beta * kl
    mask = response_mask.to(per_token.dtype)
    if aggregation == "token":
        loss = (per_token * mask).sum() / (normalizer if normalizer is not None else mask.sum().clamp(min=1.0))
    elif aggregation == "sequence":
        per_sequence = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        loss = per_sequence.sum() / (normalizer if normalizer is not None else per_sequence.shape[0])
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}; expected 'token' or 'sequence'")
    with torch.no_grad():
        low = (ratio < 1.0 - epsilon) & (per_advantage < 0)
        high = (ratio > 1.0 + epsilon) & (per_advantage > 0)
        clip_fraction = masked_mean((low | high).float(), mask)
        mean_kl = masked_mean(kl.detach(), mask)
        ratio_mean = masked_mean(ratio.detach(), mask)
    return GRPOLoss(loss, clip_fraction, mean_kl, ratio_mean)
