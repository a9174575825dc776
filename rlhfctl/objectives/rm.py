"""Reward-model objective as small pure functions (golden-tested in tests/objectives/test_rm.py).

References: the pairwise (Bradley-Terry) loss of Ouyang et al. 2022 (InstructGPT), eq. 1; the optional margin
of Touvron et al. 2023 (Llama 2), eq. 2; the reward-centering term of Eisenstein et al. 2023 as used by TRL's
``RewardTrainer`` (``center_rewards_coefficient * mean((r_chosen + r_rejected)^2)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple


class PairwiseStats(NamedTuple):
    """Loss (a tensor, for backward) and float metrics of one batch of preference pairs."""

    loss: "object"  # scalar torch.Tensor
    accuracy: float  # fraction of pairs with r_chosen > r_rejected
    reward_margin: float  # mean of r_chosen - r_rejected
    chosen_reward_mean: float
    chosen_reward_std: float
    rejected_reward_mean: float
    rejected_reward_std: float

    def metrics(self) -> dict[str, float]:
        return {"loss": float(self.loss.detach()), "accuracy": self.accuracy, "margin": self.reward_margin,
                "chosen_reward_mean": self.chosen_reward_mean, "chosen_reward_std": self.chosen_reward_std,
                "rejected_reward_mean": self.rejected_reward_mean, "rejected_reward_std": self.rejected_reward_std}


def pairwise_loss(chosen_rewards, rejected_rewards, margin=None, center_rewards_coefficient: float | None = None):
    """``-logsigmoid(r_c - r_r - margin)`` averaged over pairs, plus the optional centering term.

    chosen_rewards, rejected_rewards: ``(batch,)``; margin: ``(batch,)`` or None (zero).
    """
    import torch.nn.functional as F

    difference = chosen_rewards - rejected_rewards  # (batch,)
    shifted = difference - margin if margin is not None else difference
    loss = -F.logsigmoid(shifted).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * ((chosen_rewards + rejected_rewards) ** 2).mean()
    chosen, rejected = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    return PairwiseStats(
        loss=loss,
        accuracy=float((chosen > rejected).float().mean()),
        reward_margin=float((chosen - rejected).mean()),
        chosen_reward_mean=float(chosen.mean()),
        chosen_reward_std=float(chosen.std(unbiased=False)),
        rejected_reward_mean=float(rejected.mean()),
        rejected_reward_std=float(rejected.std(unbiased=False)),
    )


def last_token_index(attention_mask):
    """Position of the last real token of each row, for right or left padding: ``(batch, seq) -> (batch,)``."""
    import torch

    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)  # (seq,)
    return (attention_mask.long() * positions).argmax(dim=-1)


def truncate_keep_response_end(prompt_ids: Sequence[int], response_ids: Sequence[int], max_length: int) -> list[int]:
    """Join prompt and response token ids into at most ``max_length`` ids, cutting the **prompt from the left**.

    The response end (where the reward is read) is never cut. A response longer than ``max_length`` on its own
    keeps its last ``max_length`` tokens.
    """
    response = list(response_ids)
    if len(response) >= max_length:
        return response[len(response) - max_length:]
    room = max_length - len(response)
    prompt = list(prompt_ids)
    return prompt[max(0, len(prompt) - room):] + response


def reward_stats(rewards: Sequence[float]) -> dict[str, float]:
    """Mean and (population) std of rewards, as stored in ``reward_stats.json`` for PPO's score normalisation."""
    values = [float(r) for r in rewards]
    if not values:
        return {"mean": 0.0, "std": 1.0, "count": 0}
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return {"mean": mean, "std": std, "count": len(values)}


def pair_sums(rewards: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Additive sums over (chosen, rejected) reward pairs; sums from several workers add up exactly."""
    sums = {"pairs": 0.0, "loss": 0.0, "correct": 0.0, "margin": 0.0, "chosen": 0.0, "chosen_sq": 0.0,
            "rejected": 0.0, "rejected_sq": 0.0}
    for chosen, rejected in rewards:
        difference = chosen - rejected
        sums["pairs"] += 1
        sums["loss"] += _softplus(-difference)  # -logsigmoid(d) = softplus(-d)
        sums["correct"] += float(chosen > rejected)
        sums["margin"] += difference
        sums["chosen"] += chosen
        sums["chosen_sq"] += chosen * chosen
        sums["rejected"] += rejected
        sums["rejected_sq"] += rejected * rejected
    return sums


def metrics_from_sums(sums: dict[str, float]) -> dict[str, float]:
    """Loss, accuracy, margin, chosen/rejected reward mean and std, and the pooled reward mean/std."""
    count = max(sums["pairs"], 1.0)
    chosen_mean, rejected_mean = sums["chosen"] / count, sums["rejected"] / count
    reward_mean = (sums["chosen"] + sums["rejected"]) / (2 * count)
    pooled_var = (sums["chosen_sq"] + sums["rejected_sq"]) / (2 * count) - reward_mean**2
    return {
        "loss": sums["loss"] / count,
        "accuracy": sums["correct"] / count,
        "margin": sums["margin"] / count,
        "chosen_reward_mean": chosen_mean,
        "chosen_reward_std": math.sqrt(max(sums["chosen_sq"] / count - chosen_mean**2, 0.0)),
        "rejected_reward_mean": rejected_mean,
        "rejected_reward_std": math.sqrt(max(sums["rejected_sq"] / count - rejected_mean**2, 0.0)),
        "reward_mean": reward_mean,
        "reward_std": math.sqrt(max(pooled_var, 0.0)),
        "pairs": sums["pairs"],
    }


def _softplus(value: float) -> float:
    return max(value, 0.0) + math.log1p(math.exp(-abs(value)))
