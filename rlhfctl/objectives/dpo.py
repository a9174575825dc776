"""Direct preference optimisation as small pure functions (golden-tested in tests/objectives/test_dpo.py).

Every tensor is per pair, ``(batch,)``: the summed log-probability of the chosen and of the rejected response
under the policy and under the frozen reference (response tokens only, prompt excluded), and for IPO the number of
response tokens of each. ``log_ratio = log pi(y|x) - log pi_ref(y|x)``; the implicit reward of a response is
``beta * log_ratio`` and ``margin = log_ratio_chosen - log_ratio_rejected``.

Losses (each averaged over pairs):

- ``sigmoid`` [DPO]: ``-(1 - eps) * logsigmoid(beta * margin) - eps * logsigmoid(-beta * margin)``; ``eps`` is the
  label smoothing of conservative DPO [cDPO] (0: plain DPO).
- ``hinge`` [SLiC]: ``relu(1 - beta * margin)``.
- ``ipo`` [IPO]: ``(margin_per_token - 1 / (2 * beta))^2`` with each log-ratio divided by its response's token
  count, as TRL does (length-normalised, confirmed with the IPO authors per TRL's source).

References:
- [DPO] Rafailov et al., "Direct Preference Optimization" (2023), eq. 7.
- [cDPO] Mitchell, "A note on DPO with noisy preferences & relationship to IPO" (2023); TRL's sigmoid loss with
  ``label_smoothing`` up to trl 0.x.
- [IPO] Azar et al., "A General Theoretical Paradigm to Understand Learning from Human Preferences" (2023), eq. 17.
- [SLiC] Zhao et al., "SLiC-HF: Sequence Likelihood Calibration with Human Feedback" (2023).
- [TRL] Hugging Face TRL ``DPOTrainer._compute_loss`` (trl 1.16, ``trl/trainer/dpo_trainer.py``): the same
  formulas for sigmoid, hinge and ipo, and the metric names (``rewards/chosen``, ``rewards/accuracies``, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # torch is imported lazily by every function; annotations only here
    import torch

LOSS_TYPES = ("sigmoid", "ipo", "hinge")
METRIC_NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected")


class PreferenceLogps(NamedTuple):
    """Summed response log-probs of a batch of pairs, and their response token counts; each ``(batch,)``."""

    chosen: "torch.Tensor"
    rejected: "torch.Tensor"
    chosen_tokens: "torch.Tensor"
    rejected_tokens: "torch.Tensor"


class DPOLosses(NamedTuple):
    """Per-pair losses (differentiable) and implicit rewards (detached); each ``(batch,)``."""

    losses: "torch.Tensor"
    chosen_rewards: "torch.Tensor"  # beta * (log pi(chosen) - log pi_ref(chosen))
    rejected_rewards: "torch.Tensor"


def dpo_losses(
    policy: PreferenceLogps,
    reference: PreferenceLogps,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> DPOLosses:
    """The per-pair DPO/IPO/hinge loss (module docstring) and implicit rewards.

    ``policy`` carries gradients; ``reference`` is a constant (frozen model, computed once per pair).
    """
    import torch
    import torch.nn.functional as F

    chosen_log_ratio = policy.chosen - reference.chosen  # (batch,)
    rejected_log_ratio = policy.rejected - reference.rejected
    margin = chosen_log_ratio - rejected_log_ratio
    if loss_type == "sigmoid":
        losses = (-(1.0 - label_smoothing) * F.logsigmoid(beta * margin)
                  - label_smoothing * F.logsigmoid(-beta * margin))
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * margin)
    elif loss_type == "ipo":
        chosen_per_token = chosen_log_ratio / policy.chosen_tokens.clamp(min=1)
        rejected_per_token = rejected_log_ratio / policy.rejected_tokens.clamp(min=1)
        losses = (chosen_per_token - rejected_per_token - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    return DPOLosses(losses, beta * chosen_log_ratio.detach(), beta * rejected_log_ratio.detach())


def metric_sums(result: DPOLosses, policy: PreferenceLogps) -> dict[str, float]:
    """Additive sums over a batch of pairs (sums from several batches or workers add up exactly)."""
    chosen, rejected = result.chosen_rewards.float(), result.rejected_rewards.float()
    return {
        "pairs": float(chosen.numel()),
        "loss": float(result.losses.detach().float().sum()),
        "rewards/chosen": float(chosen.sum()),
        "rewards/rejected": float(rejected.sum()),
        "rewards/accuracies": float((chosen > rejected).float().sum()),
        "rewards/margins": float((chosen - rejected).sum()),
        "logps/chosen": float(policy.chosen.detach().float().sum()),
        "logps/rejected": float(policy.rejected.detach().float().sum()),
    }


def metrics_from_sums(sums: dict[str, float]) -> dict[str, float]:
    """Per-pair means of :func:`metric_sums` totals, named as TRL names them (``rewards/accuracies``, ...)."""
    count = max(sums["pairs"], 1.0)
    return {name: sums[name] / count for name in METRIC_NAMES}
