"""SFT examples as token ids: a conversation rendered, tokenised and laid out, and batches padded to their longest.

The layout and truncation rules (labels, ``IGNORE_INDEX``, which side is cut) are the objective's, in
:mod:`rlhfctl.objectives.sft`; this module turns text into that layout and tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rlhfctl.objectives.sft import IGNORE_INDEX, TokenizedExample, build_example

if TYPE_CHECKING:  # pragma: no cover
    import torch


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
