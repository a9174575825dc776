"""Scalar scores from a sequence-classification model: the reward at each row's last real token, or at any
position (PPO's value model).

- :func:`make_scorer` -> :class:`LastTokenScorer`: one reward per row ``(batch,)`` (RM training, ``rm eval``,
  ``rm score``), or two per packed preference pair ``(batch, 2)`` (:mod:`rlhfctl.models.packing`).
- :class:`TokenScoreModel`: the same head read at every position ``(batch, seq)`` (PPO's reward and value models).
- :func:`scores_at`: the head at chosen positions; the final block is computed only there
  (:mod:`rlhfctl.models.last_position`), the values are the full forward's.

Only imported by code that already runs torch, so torch is imported at the top here.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from rlhfctl.errors import UserError
from rlhfctl.models.adapters import adapters_disabled, score_head_name
from rlhfctl.models.last_position import final_block_at
from rlhfctl.models.packing import packing_supported
from rlhfctl.objectives.rm import last_token_index


def reward_head(model):
    """The scalar head module of a sequence-classification model (``score`` for decoder LMs); with LoRA, peft's
    wrapper of it (the trained copy, or the original with the adapters off)."""
    name = score_head_name(model)
    return getattr(model, name) if name else None


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (left padding gets 0), as ``generate`` computes them."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def scores_at(model, input_ids, attention_mask, position_ids, index):
    """The score head of ``model`` on its final hidden state at the read positions: ``index`` ``(batch,)`` or
    ``(batch, reads)`` -> fp32 scores of the same shape.

    ``attention_mask`` is a ``(batch, seq)`` padding mask or a ``(batch, 1, seq, seq)`` boolean mask. The final
    block computes only at the read positions (``last_position``); the values are the full forward's there.
    """
    read_index = index if index.dim() == 2 else index[:, None]  # (batch, reads)
    backbone = model.base_model
    no_cache = {"use_cache": False} if getattr(backbone.config, "use_cache", False) else {}
    with final_block_at(backbone, read_index, attention_mask):
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          **no_cache).last_hidden_state  # (batch, seq, hidden)
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    scores = reward_head(model)(hidden[rows, read_index]).squeeze(-1).float()  # (batch, reads)
    return scores if index.dim() == 2 else scores[:, 0]


class LastTokenScorer(nn.Module):
    """A sequence-classification model returning one reward per row: the head applied to the hidden state of the
    last real token (the last 1 of the attention mask), for right or left padding and whatever the pad id.
    DDP can wrap it; ``packs_pairs`` says whether its model takes packed preference pairs."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.packs_pairs = reward_head(model) is not None and packing_supported(model)

    def forward(self, input_ids, attention_mask, position_ids=None, read_index=None):
        """``(batch, seq)`` ids and padding mask -> ``(batch,)`` rewards at each row's last real token; or, for
        packed pairs (``models.packing``), a 4-D mask, position ids and ``read_index`` ``(batch, 2)`` ->
        ``(batch, 2)``."""
        if read_index is not None:
            return scores_at(self.model, input_ids, attention_mask, position_ids, read_index)
        if reward_head(self.model) is None:  # unusual architecture: let transformers pool (it uses pad_token_id)
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
        # Positions count real tokens only, so left and right padding give the same scores.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (batch, seq)
        return scores_at(self.model, input_ids, attention_mask, position_ids, last_token_index(attention_mask))


def make_scorer(model) -> LastTokenScorer:
    """Wrap a sequence-classification model as a :class:`LastTokenScorer` (one reward per row, ``(batch,)``)."""
    return LastTokenScorer(model)


class TokenScoreModel(nn.Module):
    """A ``*ForSequenceClassification`` model (num_labels=1) read out at every position: ``(batch, seq)`` scores.

    The reward model is read at the last real token; the value model (initialised from the reward model) at the
    position before each response token. Wrapping the backbone + ``score`` head in one module keeps the value
    model's forward inside DDP, so its gradients are all-reduced. ``adapters=False`` reads a LoRA-adapted model
    with its adapters off: the base it was adapted from (with LoRA, PPO's reward model is the value model's base).
    """

    def __init__(self, model: nn.Module, *, adapters: bool = True) -> None:
        super().__init__()
        head = reward_head(model)
        head = getattr(head, "original_module", head)  # peft's trainable copy wraps the original linear head
        if not isinstance(head, nn.Linear) or not isinstance(getattr(model, "base_model", None), nn.Module):
            raise UserError(
                f"{type(model).__name__} has no per-token linear score head on top of its backbone, which PPO "
                "needs for the reward and value models.",
                hint="Use a decoder model (GPT-2, Llama, Qwen, Mistral ...) trained with `rlhfctl rm train`.",
            )
        self.model = model  # the full classification model, saved/exported as is
        self.adapters = adapters

    def _switch(self):
        return contextlib.nullcontext() if self.adapters else adapters_disabled(self.model)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        with self._switch():
            hidden = self.model.base_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state  # (batch, seq, hidden)
            return reward_head(self.model)(hidden).squeeze(-1).float()  # (batch, seq)

    def score_at(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """The score at one position per row, ``index`` ``(batch,)`` -> ``(batch,)``, or at several, ``(batch,
        reads)`` -> ``(batch, reads)``; the final block computes only there (``last_position``), the same values
        as ``forward(...)[rows, index]``."""
        with self._switch():
            return scores_at(self.model, input_ids, attention_mask, position_ids, index)
