"""SFT objective as pure functions: token layout with completion-only labels, truncation and the masked loss.

Everything here is a small function of lists or tensors, tested against hand-computed values
(``tests/objectives/test_sft.py``); tokenising conversations and padding batches is
:mod:`rlhfctl.models.conversation`'s job. Layout of one example::

    input_ids  = prompt_ids + response_ids + [eos]
    labels     = [-100] * len(prompt_ids) + response_ids + [eos]      (completion_only_loss = true)
    labels     = input_ids                                            (completion_only_loss = false)

``-100`` is the ignore index of ``torch.nn.functional.cross_entropy`` (and of Hugging Face models). The loss at
position ``t`` scores token ``t + 1`` (the causal shift), so the first response token is predicted from the last
prompt token and prompt tokens never contribute to the loss.

Truncation to ``max_length``: the prompt is cut **from the left** (its end,
next to the response, is what the model needs most) and the response **from the right**. When both are too long
each side is guaranteed up to half the window: the prompt keeps
``min(P, max(L - R, L // 2))`` tokens and the response the rest, where ``P``/``R`` are the prompt/response
lengths (EOS included in ``R``) and ``L`` is ``max_length``. A response cut from the right loses its EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # pragma: no cover
    import torch

IGNORE_INDEX = -100


class TokenizedExample(NamedTuple):
    """One training example as token ids; ``labels`` holds ``IGNORE_INDEX`` where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    prompt_tokens_dropped: int  # tokens cut from the prompt's start by truncation
    response_tokens_dropped: int  # tokens cut from the response's end (EOS included) by truncation


class TokenLoss(NamedTuple):
    """Summed negative log-likelihood over the scored tokens and how many tokens were scored."""

    nll_sum: "torch.Tensor"  # () float
    num_tokens: "torch.Tensor"  # () int64


def truncation_lengths(prompt_len: int, response_len: int, max_length: int) -> tuple[int, int]:
    """How many prompt and response tokens survive truncation to ``max_length`` (see the module docstring)."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, found {max_length}")
    if prompt_len + response_len <= max_length:
        return prompt_len, response_len
    prompt_keep = min(prompt_len, max(max_length - response_len, max_length // 2))
    response_keep = min(response_len, max_length - prompt_keep)
    return prompt_keep, response_keep


def build_example(
    prompt_ids: Sequence[int],
    response_ids: Sequence[int],
    *,
    eos_token_id: int | None,
    max_length: int,
    completion_only_loss: bool = True,
) -> TokenizedExample:
    """Concatenate prompt and response (+ EOS unless the response already ends with it), truncate, label."""
    response = list(response_ids)
    if eos_token_id is not None and (not response or response[-1] != eos_token_id):
        response.append(eos_token_id)
    prompt_keep, response_keep = truncation_lengths(len(prompt_ids), len(response), max_length)
    prompt = list(prompt_ids)[len(prompt_ids) - prompt_keep:]
    response_kept = response[:response_keep]
    input_ids = prompt + response_kept
    labels = ([IGNORE_INDEX] * len(prompt) if completion_only_loss else list(prompt)) + response_kept
    return TokenizedExample(
        input_ids=input_ids,
        labels=labels,
        prompt_tokens_dropped=len(prompt_ids) - prompt_keep,
        response_tokens_dropped=len(response) - response_keep,
    )


def masked_token_nll(logits: "torch.Tensor", labels: "torch.Tensor") -> TokenLoss:
    """Summed next-token NLL over labelled positions, with the causal shift.

    logits: (batch, seq, vocab) — logits at position t score token t + 1.
    labels: (batch, seq) — target ids; ``IGNORE_INDEX`` where no loss is taken (prompt, padding).
    The mean per-token loss is ``nll_sum / num_tokens``; summing both over micro-batches and workers before
    dividing gives the exact mean over every scored token.
    """
    import torch
    import torch.nn.functional as F

    shifted_logits = logits[:, :-1, :].float()  # (batch, seq - 1, vocab)
    shifted_labels = labels[:, 1:]  # (batch, seq - 1)
    nll_sum = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    num_tokens = (shifted_labels != IGNORE_INDEX).sum()
    return TokenLoss(nll_sum=nll_sum, num_tokens=num_tokens.to(torch.long))


def mean_token_loss(token_loss: TokenLoss) -> "torch.Tensor":
    """Mean NLL per scored token (0 when nothing was scored, so an all-masked batch adds no gradient)."""
    return token_loss.nll_sum / token_loss.num_tokens.clamp(min=1)


def perplexity(mean_nll: float) -> float:
    """``exp(mean NLL)``, capped so a diverged run prints ``inf`` rather than overflowing."""
    import math

    return math.exp(mean_nll) if mean_nll < 700 else float("inf")
