"""Golden-value tests of the DPO math (hand-computed numbers), one per loss type, and the TRL-named metrics.

Two pairs, beta = 0.1:
    pair 1: log pi (chosen, rejected) = (-10, -12), reference (-11, -11), 4 and 2 response tokens
            -> log-ratios (+1, -1), margin +2, beta * margin = +0.2
    pair 2: log pi = (-8, -6), reference (-8, -7), 2 and 5 response tokens
            -> log-ratios (0, +1), margin -1, beta * margin = -0.1
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhfctl.objectives.dpo import PreferenceLogps, dpo_losses, metric_sums, metrics_from_sums

BETA = 0.1
F64 = torch.float64  # so the comparisons can be tight
REFERENCE = PreferenceLogps(torch.tensor([-11.0, -8.0], dtype=F64), torch.tensor([-11.0, -7.0], dtype=F64),
                            torch.tensor([4.0, 2.0], dtype=F64), torch.tensor([2.0, 5.0], dtype=F64))


def policy(requires_grad: bool = False) -> PreferenceLogps:
    chosen = torch.tensor([-10.0, -8.0], dtype=F64, requires_grad=requires_grad)
    return PreferenceLogps(chosen, torch.tensor([-12.0, -6.0], dtype=F64), REFERENCE.chosen_tokens,
                           REFERENCE.rejected_tokens)


def softplus(x: float) -> float:  # -logsigmoid(-x)
    return math.log1p(math.exp(x))


@pytest.mark.parametrize(("loss_type", "smoothing", "expected"), [
    # -logsigmoid(0.2) = log(1 + e^-0.2) = 0.5981388693; -logsigmoid(-0.1) = log(1 + e^0.1) = 0.7443966600
    ("sigmoid", 0.0, [0.5981388693, 0.7443966600]),
    # cDPO, eps = 0.2: 0.8 * 0.5981388693 + 0.2 * 0.7981388693 = 0.6381388693 (= 0.5981... + 0.2 * 0.2);
    #                  0.8 * 0.7443966600 + 0.2 * 0.6443966600 = 0.7243966600 (= 0.7443... - 0.2 * 0.1)
    ("sigmoid", 0.2, [0.6381388693, 0.7243966600]),
    # relu(1 - 0.2) = 0.8; relu(1 + 0.1) = 1.1
    ("hinge", 0.0, [0.8, 1.1]),
    # per-token log-ratios: pair 1: 1/4 - (-1)/2 = 0.75 -> (0.75 - 5)^2 = 18.0625;
    #                       pair 2: 0/2 - 1/5 = -0.2 -> (-0.2 - 5)^2 = 27.04
    ("ipo", 0.0, [18.0625, 27.04]),
])
def test_each_loss_type_against_hand_computed_values(loss_type, smoothing, expected):
    result = dpo_losses(policy(), REFERENCE, beta=BETA, loss_type=loss_type, label_smoothing=smoothing)
    assert result.losses.tolist() == pytest.approx(expected, abs=1e-9)
    assert result.chosen_rewards.tolist() == pytest.approx([0.1, 0.0])  # beta * (+1), beta * 0
    assert result.rejected_rewards.tolist() == pytest.approx([-0.1, 0.1])  # beta * (-1), beta * (+1)


def test_the_formulas_are_trls():
    """TRL 1.16's DPOTrainer._compute_loss writes sigmoid, hinge and ipo as below (delta_score = margin)."""
    import torch.nn.functional as F

    logps, ref = policy(), REFERENCE
    delta = (logps.chosen - ref.chosen) - (logps.rejected - ref.rejected)
    trl = {
        "sigmoid": -F.logsigmoid(BETA * delta),
        "hinge": torch.relu(1 - BETA * delta),
        "ipo": ((logps.chosen - ref.chosen) / logps.chosen_tokens - (logps.rejected - ref.rejected)
                / logps.rejected_tokens - 1 / (2 * BETA)) ** 2,
    }
    for loss_type, expected in trl.items():
        assert torch.allclose(dpo_losses(logps, ref, beta=BETA, loss_type=loss_type).losses, expected)


def test_the_gradient_pushes_the_chosen_log_prob_up():
    logps = policy(requires_grad=True)
    dpo_losses(logps, REFERENCE, beta=BETA).losses.mean().backward()
    # d/d logpi_c of -logsigmoid(beta * margin) = -beta * sigmoid(-beta * margin); mean over 2 pairs
    expected = [-BETA / (1 + math.exp(0.2)) / 2, -BETA / (1 + math.exp(-0.1)) / 2]  # -0.0225083, -0.0262479
    assert logps.chosen.grad.tolist() == pytest.approx(expected, abs=1e-9)


def test_metrics_carry_trls_names_and_add_up_over_batches():
    logps = policy()
    result = dpo_losses(logps, REFERENCE, beta=BETA)
    first = metric_sums(result._replace(losses=result.losses[:1], chosen_rewards=result.chosen_rewards[:1],
                                        rejected_rewards=result.rejected_rewards[:1]),
                        logps._replace(chosen=logps.chosen[:1], rejected=logps.rejected[:1]))
    second = metric_sums(result._replace(losses=result.losses[1:], chosen_rewards=result.chosen_rewards[1:],
                                         rejected_rewards=result.rejected_rewards[1:]),
                         logps._replace(chosen=logps.chosen[1:], rejected=logps.rejected[1:]))
    together = metrics_from_sums({key: first[key] + second[key] for key in first})
    assert together == pytest.approx(metrics_from_sums(metric_sums(result, logps)))
    assert together == pytest.approx({
        "loss": (0.5981388693 + 0.7443966600) / 2,
        "rewards/chosen": 0.05, "rewards/rejected": 0.0,
        "rewards/accuracies": 0.5,  # pair 1 right (0.1 > -0.1), pair 2 wrong (0.0 < 0.1)
        "rewards/margins": 0.05,  # (0.2 - 0.1) / 2
        "logps/chosen": -9.0, "logps/rejected": -9.0,
    })


def test_tied_rewards_are_not_counted_as_accurate():
    """Before training (policy == reference) every implicit reward is 0: accuracy 0, as TRL counts it."""
    result = dpo_losses(REFERENCE, REFERENCE, beta=BETA)
    assert metrics_from_sums(metric_sums(result, REFERENCE))["rewards/accuracies"] == 0.0
    assert result.losses.tolist() == pytest.approx([math.log(2)] * 2)


def test_unknown_loss_type_is_refused():
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_losses(policy(), REFERENCE, beta=BETA, loss_type="kto")
