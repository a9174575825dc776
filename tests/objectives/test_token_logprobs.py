"""The block-wise log-probs and entropy against autograd's whole-tensor operations: values, gradients, dtypes."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfctl.objectives import token_logprobs as tl


def whole_tensor(logits, targets, first, temperature, entropy_grad):
    """The operations rlhfctl used before (and TRL uses): a tempered fp32 copy, logsumexp, gather, softmax."""
    rows = targets.shape[1]
    tempered = logits[:, first : first + rows].float() / temperature
    normalizer = torch.logsumexp(tempered, dim=-1)
    logprobs = tempered.gather(2, targets.unsqueeze(-1)).squeeze(-1) - normalizer
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        scaled, log_total = (tempered, normalizer) if entropy_grad else (tempered.detach(), normalizer.detach())
        entropy = log_total - (torch.exp(scaled - log_total.unsqueeze(-1)) * scaled).sum(dim=-1)
    return logprobs, entropy


def test_hand_computed_values():
    # vocab 3, temperature 2: position 1 scores [0, 0, 1] / ... chosen token 2; position 2 [2, 0, 0], chosen 0
    logits = torch.zeros(1, 4, 3)
    logits[0, 1] = torch.tensor([0.0, 0.0, 2.0])
    logits[0, 2] = torch.tensor([4.0, 0.0, 0.0])
    logits[0, 3] = torch.tensor([100.0, -100.0, 0.0])  # not read
    logprobs, entropy = tl.token_logprobs_and_entropy(logits, torch.tensor([[2, 0]]), 1, 2.0)

    def entropy_of(z):
        total = sum(math.exp(v) for v in z)
        return -sum(math.exp(v) / total * (v - math.log(total)) for v in z)

    expected = [[1 - math.log(2 + math.e), 2 - math.log(math.e**2 + 2)]]
    assert torch.allclose(logprobs.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.allclose(entropy.double(), torch.tensor([[entropy_of([0, 0, 1]), entropy_of([2, 0, 0])]],
                                                         dtype=torch.float64), atol=1e-6, rtol=0)


def test_hand_computed_gradients():
    # one position, vocab 2, logits [0, 0], temperature 1: p = [1/2, 1/2], H = log 2.
    # d log p(token 0) / dz = onehot - p = [1/2, -1/2]; dH/dz_k = -p_k (z_k - log 2 + log 2) = 0
    logits = torch.zeros(1, 1, 2, requires_grad=True)
    logprobs, entropy = tl.token_logprobs_and_entropy(logits, torch.tensor([[0]]), 0, entropy_grad=True)
    (logprobs.sum() + entropy.sum()).backward()
    assert torch.allclose(logits.grad, torch.tensor([[[0.5, -0.5]]]), atol=1e-7, rtol=0)
    # logits [log 3, 0] at temperature 2: z = [log 3 / 2, 0] = [log sqrt 3, 0], p = [s / (s + 1), 1 / (s + 1)]
    logits = torch.tensor([[[math.log(3.0), 0.0]]], requires_grad=True)
    _, entropy = tl.token_logprobs_and_entropy(logits, torch.tensor([[1]]), 0, 2.0, entropy_grad=True)
    entropy.sum().backward()
    s = math.sqrt(3.0)
    p = [s / (s + 1), 1 / (s + 1)]
    z = [math.log(s), 0.0]
    lse = math.log(s + 1)
    h = -sum(pk * (zk - lse) for pk, zk in zip(p, z))
    expected = [-pk * (zk - lse + h) / 2.0 for pk, zk in zip(p, z)]  # / temperature
    assert torch.allclose(logits.grad.double(), torch.tensor([[expected]], dtype=torch.float64), atol=1e-7, rtol=0)


# rows of the vocabulary a block: 3 splits every sequence, 15 takes two sequences of 7 at a time, 10**6 all three
@pytest.mark.parametrize("block_rows", [3, 15, 10**6])
@pytest.mark.parametrize("entropy_grad", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_match_the_whole_tensor_operations(entropy_grad, temperature, block_rows, monkeypatch):
    monkeypatch.setattr(tl, "ROWS_PER_BLOCK_BYTES", block_rows * 4 * 50)
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 9, 50)).requires_grad_()
    targets = torch.randint(0, 50, (3, 7))
    logprobs, entropy = tl.token_logprobs_and_entropy(logits, targets, 1, temperature, entropy_grad=entropy_grad)
    expected_logprobs, expected_entropy = whole_tensor(logits, targets, 1, temperature, entropy_grad)
    assert torch.equal(logprobs, expected_logprobs)  # the same operations on each row: bit for bit
    torch.testing.assert_close(entropy, expected_entropy, rtol=1e-6, atol=1e-6)
    assert entropy.requires_grad is entropy_grad
    weights, entropy_weights = torch.randn(3, 7), torch.randn(3, 7)
    total = (weights * logprobs).sum() + ((entropy_weights * entropy).sum() if entropy_grad else 0)
    expected_total = (weights * expected_logprobs).sum() + (
        (entropy_weights * expected_entropy).sum() if entropy_grad else 0)
    (grad,) = torch.autograd.grad(total, logits)
    (expected_grad,) = torch.autograd.grad(expected_total, logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(grad[:, 0], torch.zeros_like(grad[:, 0])) and torch.equal(grad[:, 8], grad[:, 0])


def test_blocks_cover_every_position_once():
    assert tl._blocks(3, 7, 50) == [(slice(0, 3), slice(0, 7))]  # 8 MiB of fp32 holds all of them
    vocab = tl.ROWS_PER_BLOCK_BYTES // (4 * 3)  # three rows a block
    assert tl._blocks(2, 7, vocab) == [(slice(row, row + 1), slice(start, min(start + 3, 7)))
                                       for row in range(2) for start in (0, 3, 6)]
    vocab = tl.ROWS_PER_BLOCK_BYTES // (4 * 15)  # two sequences of 7 a block
    assert tl._blocks(5, 7, vocab) == [(slice(0, 2), slice(0, 7)), (slice(2, 4), slice(0, 7)), (slice(4, 5), slice(0, 7))]


def test_bfloat16_logits_get_a_bfloat16_gradient_computed_in_float32():
    torch.manual_seed(1)
    logits = (2 * torch.randn(2, 5, 40)).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 40, (2, 4))
    logprobs, entropy = tl.token_logprobs_and_entropy(logits, targets, 0, 0.7, entropy_grad=True)
    expected_logprobs, expected_entropy = whole_tensor(logits, targets, 0, 0.7, True)
    assert logprobs.dtype == torch.float32 and torch.equal(logprobs, expected_logprobs)
    (logprobs.sum() + entropy.sum()).backward()
    grad = logits.grad.clone()
    logits.grad = None
    (expected_logprobs.sum() + expected_entropy.sum()).backward()
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), logits.grad.float(), rtol=1e-2, atol=1e-2)


def test_without_gradients_and_without_entropy():
    torch.manual_seed(2)
    logits = torch.randn(2, 6, 30)
    targets = torch.randint(0, 30, (2, 5))
    logprobs, entropy = tl.token_logprobs_and_entropy(logits, targets, 0, with_entropy=False)
    assert entropy is None and not logprobs.requires_grad
    assert torch.equal(logprobs, whole_tensor(logits, targets, 0, 1.0, False)[0])
    logits.requires_grad_()
    with torch.no_grad():
        assert not tl.token_logprobs_and_entropy(logits, targets, 0)[0].requires_grad
    logprobs, entropy = tl.token_logprobs_and_entropy(logits, targets, 0, with_entropy=False)
    assert entropy is None and logprobs.requires_grad


def test_the_backward_keeps_no_full_vocabulary_copy():
    """What autograd saves for the backward: the logits themselves (the model's output, no copy), the targets and
    per-row values — never a second ``(batch, rows, vocab)`` tensor."""
    logits = torch.randn(2, 6, 1000, requires_grad=True)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        tl.token_logprobs_and_entropy(logits, torch.randint(0, 1000, (2, 5)), 0, 0.7, entropy_grad=True)
    large = [tensor for tensor in saved if tensor.numel() >= 1000]
    assert len(large) == 1 and large[0].data_ptr() == logits.data_ptr()
