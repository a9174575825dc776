"""Golden-value tests of the SFT objective (token layout, truncation, masked loss)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfctl.objectives.sft import (
    IGNORE_INDEX,
    build_example,
    masked_token_nll,
    mean_token_loss,
    perplexity,
    truncation_lengths,
)

EOS = 9
PAD = 0


def test_prompt_tokens_carry_no_label_and_eos_is_appended():
    example = build_example([5, 6, 7], [3, 4], eos_token_id=EOS, max_length=16)
    assert example.input_ids == [5, 6, 7, 3, 4, EOS]
    assert example.labels == [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 3, 4, EOS]
    assert (example.prompt_tokens_dropped, example.response_tokens_dropped) == (0, 0)


def test_full_sequence_loss_labels_every_token():
    example = build_example([5, 6], [3], eos_token_id=EOS, max_length=16, completion_only_loss=False)
    assert example.labels == example.input_ids == [5, 6, 3, EOS]


def test_eos_is_not_doubled_when_the_response_already_ends_with_it():
    example = build_example([5], [3, EOS], eos_token_id=EOS, max_length=16)
    assert example.input_ids == [5, 3, EOS]


@pytest.mark.parametrize(
    ("prompt_len", "response_len", "max_length", "expected"),
    [
        (3, 3, 6, (3, 3)),  # fits exactly
        (10, 100, 50, (10, 40)),  # short prompt kept whole, response cut from the right
        (100, 10, 50, (40, 10)),  # short response kept whole, prompt cut from the left
        (100, 100, 50, (25, 25)),  # both long: half each
        (100, 100, 51, (25, 26)),
        (0, 10, 4, (0, 4)),
        (7, 1, 1, (0, 1)),  # the response always keeps at least one token
    ],
)
def test_truncation_lengths(prompt_len, response_len, max_length, expected):
    assert truncation_lengths(prompt_len, response_len, max_length) == expected


def test_truncation_cuts_prompt_from_the_left_and_response_from_the_right():
    example = build_example([1, 2, 3, 4, 5, 6], [11, 12, 13, 14, 15], eos_token_id=EOS, max_length=6)
    # P = 6, R = 6 (EOS included), L = 6: prompt keeps its last 3, response its first 3 (EOS lost)
    assert example.input_ids == [4, 5, 6, 11, 12, 13]
    assert example.labels == [IGNORE_INDEX] * 3 + [11, 12, 13]
    assert (example.prompt_tokens_dropped, example.response_tokens_dropped) == (3, 3)


def test_masked_token_nll_golden_values():
    # vocab 2. Position 0 gives p(1) = 3/4 (logits [0, ln 3]); position 1 gives p = 1/2 each; position 2 unused.
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, -5.0]]])  # (1, 3, 2)
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])  # token 1 predicted at t=0, token 0 at t=1
    loss = masked_token_nll(logits, labels)
    assert loss.num_tokens.item() == 2
    assert loss.nll_sum.item() == pytest.approx(math.log(4 / 3) + math.log(2), rel=1e-6)
    assert mean_token_loss(loss).item() == pytest.approx(math.log(8 / 3) / 2, rel=1e-6)


def test_prompt_tokens_do_not_change_the_loss():
    """Whatever the logits predict for prompt positions, the masked loss is the same."""
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 4, 2, 7],
                           [IGNORE_INDEX, IGNORE_INDEX, 1, 3, IGNORE_INDEX, IGNORE_INDEX]])
    before = masked_token_nll(logits, labels)
    perturbed = logits.clone()
    perturbed[0, :2] += 100 * torch.randn(2, 11)  # predictions of prompt tokens 1..2 (labels ignored)
    perturbed[1, 3:] += 100 * torch.randn(3, 11)  # predictions of padding and of the last position
    after = masked_token_nll(perturbed, labels)
    assert after.nll_sum.item() == pytest.approx(before.nll_sum.item(), rel=1e-6)
    assert before.num_tokens.item() == 5
    # ... and the gradient reaches only the positions that predict labelled tokens
    logits.requires_grad_(True)
    masked_token_nll(logits, labels).nll_sum.backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert touched.tolist() == [[False, False, True, True, True, False], [False, True, True, False, False, False]]


def test_all_masked_batch_gives_zero_mean_loss():
    loss = masked_token_nll(torch.randn(1, 3, 4), torch.full((1, 3), IGNORE_INDEX))
    assert loss.num_tokens.item() == 0
    assert mean_token_loss(loss).item() == 0.0


def test_perplexity():
    assert perplexity(math.log(5.0)) == pytest.approx(5.0)
    assert perplexity(1e4) == float("inf")
