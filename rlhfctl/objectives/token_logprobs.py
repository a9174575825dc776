"""The chosen tokens' log-probs and the per-token entropy from full-vocabulary logits, a few rows at a time.

``log p(token) = z[token] - logsumexp(z)`` and ``H = logsumexp(z) - sum(softmax(z) * z)`` with ``z = logits /
temperature`` (in fp32), for the positions ``first .. first + rows - 1`` of ``logits`` ``(batch, seq, vocab)``.
Written with autograd's own operations, the tempered copy of the logits is a new full-vocabulary fp32 tensor, kept
for the backward, the entropy makes three more while it is computed, and the backward makes one full-vocabulary
gradient per operation on the way back to the logits (the log-normaliser's, the gather's, the temperature's, the
slice's) — each ``batch x rows x vocab`` floats (4 x 65 x 32,000 fp32 = 33 MB at rlhfctl's benchmark shapes).

:func:`token_logprobs_and_entropy` computes the same values one block of rows at a time (at most
``ROWS_PER_BLOCK_BYTES`` of fp32 temporaries each): the forward keeps only the logits the model made (a reference,
no copy) and one normaliser per row, and the backward recomputes each block's softmax and writes the gradient into
one logits-sized tensor — the one the language-model head's backward needs anyway. The same approach as Liger
Kernel's chunked losses and TRL's ``selective_log_softmax``, applied to PPO's log-probs and entropy:

- ``d log p(token) / dz = onehot(token) - softmax(z)``;
- ``dH / dz_k = -p_k (z_k - logsumexp(z) + H)`` (from ``H = -sum p log p``), only when the entropy carries
  gradients;
- both divided by ``temperature`` on the way back to the logits.

The forward's values are those of the whole-tensor operations (each row's reductions are the same calls on the same
row); gradients agree to fp32 rounding. Pure tensor maths, no model in sight; golden tests in
``tests/objectives/test_token_logprobs.py``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily by every function; annotations only here
    import torch

ROWS_PER_BLOCK_BYTES = 8 * 2**20  # fp32 bytes of one block's temporaries (rows x vocab x 4): 65 rows at 32 k vocab


def token_logprobs_and_entropy(
    logits: "torch.Tensor", targets: "torch.Tensor", first: int, temperature: float = 1.0, *,
    with_entropy: bool = True, entropy_grad: bool = False,
) -> tuple["torch.Tensor", "torch.Tensor | None"]:
    """Log-probs of ``targets`` and (``with_entropy``) the entropy of the tempered distribution.

    Args:
        logits: ``(batch, seq, vocab)``, any float dtype; position ``first + i`` scores ``targets[:, i]``.
        targets: ``(batch, rows)`` token ids, ``first + rows <= seq``.
        first: the position of ``logits`` that scores ``targets[:, 0]``.
        temperature: the logits are divided by it (in fp32) before the softmax.
        with_entropy: compute the entropy too (else ``None`` is returned for it).
        entropy_grad: the entropy carries gradients (only with ``with_entropy``); without it the entropy is a
            constant of the graph, as a ``detach()``-ed value would be.

    Returns:
        ``(logprobs, entropy)``, ``(batch, rows)`` fp32 each; the log-probs carry gradients whenever ``logits``
        does (and grad mode is on).
    """
    import torch

    if torch.is_grad_enabled() and logits.requires_grad:
        logprobs, entropy = _token_logprobs_function().apply(logits, targets, first, float(temperature),
                                                             with_entropy, entropy_grad)
        return logprobs, (entropy if with_entropy else None)
    with torch.no_grad():
        logprobs, entropy, _ = _forward_blocks(logits, targets, first, float(temperature), with_entropy)
    return logprobs, entropy


def _blocks(batch: int, rows: int, vocab: int) -> list[tuple[slice, slice]]:
    """``(sequences, positions)`` of each block, ``ROWS_PER_BLOCK_BYTES`` of fp32 each at most: whole sequences
    together when one fits (a small vocabulary: few blocks), else a run of positions of one sequence."""
    per_block = max(1, ROWS_PER_BLOCK_BYTES // (4 * max(vocab, 1)))  # rows of the vocabulary per block
    if per_block >= rows:
        sequences = per_block // max(rows, 1)
        return [(slice(start, min(start + sequences, batch)), slice(0, rows)) for start in range(0, batch, sequences)]
    return [(slice(row, row + 1), slice(start, min(start + per_block, rows)))
            for row in range(batch) for start in range(0, rows, per_block)]


def _forward_blocks(logits, targets, first: int, temperature: float, with_entropy: bool):
    """``(logprobs, entropy or None, normalizer)``, ``(batch, rows)`` fp32 each, one block of rows at a time."""
    import torch

    batch, rows = targets.shape
    logprobs = torch.empty(batch, rows, dtype=torch.float32, device=logits.device)
    normalizer = torch.empty_like(logprobs)
    entropy = torch.empty_like(logprobs) if with_entropy else None
    for sequences, positions in _blocks(batch, rows, logits.shape[-1]):
        shifted = slice(first + positions.start, first + positions.stop)  # the logits that score those positions
        tempered = logits[sequences, shifted].float() / temperature  # (block sequences, block positions, vocab)
        log_total = torch.logsumexp(tempered, dim=-1)
        chosen = tempered.gather(2, targets[sequences, positions, None]).squeeze(2)
        logprobs[sequences, positions] = chosen - log_total
        normalizer[sequences, positions] = log_total
        if with_entropy:
            probs = torch.exp(tempered - log_total[..., None])
            entropy[sequences, positions] = log_total - (probs * tempered).sum(dim=-1)
    return logprobs, entropy, normalizer


def _token_logprobs_backward(logits, targets, first: int, temperature: float, normalizer, entropy,
                             logprobs_grad, entropy_grad):
    """The gradient with respect to ``logits`` ``(batch, seq, vocab)``, in their dtype; ``entropy_grad`` is
    ``None`` when the entropy carries none. Positions outside ``first .. first + rows - 1`` get 0."""
    import torch

    batch, rows = targets.shape
    grad = torch.empty_like(logits)
    grad[:, :first].zero_()
    grad[:, first + rows :].zero_()
    for sequences, positions in _blocks(batch, rows, logits.shape[-1]):
        shifted = slice(first + positions.start, first + positions.stop)
        tempered = logits[sequences, shifted].float() / temperature  # (block sequences, block positions, vocab)
        log_total = normalizer[sequences, positions, None]
        probs = torch.exp(tempered - log_total)
        block_grad = probs * -logprobs_grad[sequences, positions, None]  # d logp / dz = onehot - softmax
        if entropy_grad is not None:  # dH / dz = -p (z - logsumexp + H)
            centred = tempered.sub_(log_total).add_(entropy[sequences, positions, None])
            block_grad -= probs.mul_(centred).mul_(entropy_grad[sequences, positions, None])
        block_grad.scatter_add_(2, targets[sequences, positions, None], logprobs_grad[sequences, positions, None])
        grad[sequences, shifted] = block_grad / temperature
    return grad


@functools.cache
def _token_logprobs_function():
    """The autograd function, built on first use (torch is not imported with this module)."""
    import torch

    class TokenLogProbs(torch.autograd.Function):
        """:func:`token_logprobs_and_entropy` with a backward that recomputes each block's softmax; saves only the
        logits (a reference to the model's output), the targets and two ``(batch, rows)`` tensors."""

        @staticmethod
        def forward(ctx, logits, targets, first, temperature, with_entropy, entropy_grad):
            logprobs, entropy, normalizer = _forward_blocks(logits, targets, first, temperature, with_entropy)
            ctx.first, ctx.temperature, ctx.entropy_grad = first, temperature, with_entropy and entropy_grad
            ctx.save_for_backward(logits, targets, normalizer, entropy if ctx.entropy_grad else None)
            if entropy is None:
                entropy = logprobs.new_zeros(())
            if not ctx.entropy_grad:
                ctx.mark_non_differentiable(entropy)
            return logprobs, entropy

        @staticmethod
        def backward(ctx, logprobs_grad, entropy_grad):
            logits, targets, normalizer, entropy = ctx.saved_tensors
            if logprobs_grad is None:
                logprobs_grad = torch.zeros_like(normalizer)
            if not ctx.entropy_grad:
                entropy_grad = None
            elif entropy_grad is None:
                entropy_grad = torch.zeros_like(normalizer)
            grad = _token_logprobs_backward(logits, targets, ctx.first, ctx.temperature, normalizer, entropy,
                                            logprobs_grad, entropy_grad)
            return grad, None, None, None, None, None

    return TokenLogProbs
