"""The SFT stage's pure pieces: token layout with completion-only labels, truncation, padding and the masked loss.

Everything here is a small function of lists or tensors, tested against hand-computed values
(``tests/stages/test_sft_math.py``). Layout of one example::

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


def collate(examples: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, "torch.Tensor"]:
    """Right-pad a batch to its own longest example (dynamic padding, never a fixed length).

    Returns ``input_ids`` (batch, seq) padded with ``pad_token_id``, ``attention_mask`` (batch, seq) with 1 on
    real tokens and ``labels`` (batch, seq) with ``IGNORE_INDEX`` on padding.
    """
    import torch

    if not examples:
        raise ValueError("cannot collate an empty batch")
    longest = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, :length] = torch.tensor(example.labels, dtype=torch.long)
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


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


def tokenize_conversation(
    messages: Sequence[dict],
    tokenizer,
    *,
    max_length: int,
    completion_only_loss: bool = True,
) -> TokenizedExample:
    """Render a conversation ending in an assistant message and lay it out with :func:`build_example`.

    The text split comes from :func:`rlhfctl.data.prompting.render_sft_example` (chat template when the
    tokenizer has one, otherwise the plain template), so SFT trains on exactly the prompt text RM and PPO
    render. Prompt and response are tokenised separately, which makes the prompt/response boundary exact. The
    prompt gets the tokenizer's special tokens (e.g. BOS) only when it is plain text; a chat template writes its
    own.
    """
    from rlhfctl.data.prompting import has_chat_template, render_sft_example

    prompt_text, response_text = render_sft_example(messages, tokenizer)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    response_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
    return build_example(
        prompt_ids,
        response_ids,
        eos_token_id=tokenizer.eos_token_id,
        max_length=max_length,
        completion_only_loss=completion_only_loss,
    )
