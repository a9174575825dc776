"""Summed response log-probs of preference pairs under a causal LM, chosen and rejected in one forward (DPO).

DPO needs ``log pi(response | prompt)`` of both replies of a pair: the sum over every response token of the
log-probability the model gives it at the position before. Two layouts, the same numbers:

- **packed** (:mod:`rlhfctl.models.packing`'s row: the tokens both sequences share, the prompt, once, then the
  rest of the chosen reply, then the rest of the rejected one, each attending only to the shared part and itself).
  A reply's first own token is predicted at the last shared position; every later one at the position before it
  in its own part. Used for GPT-2, Llama and Qwen2 causal LMs on transformers 5, where the final transformer block
  is also computed only at the positions that predict a response token (:mod:`rlhfctl.models.last_position`)
  and the vocabulary projection only there.
- **two rows** per pair (chosen rows, then rejected rows, right-padded) with the model's own forward: any other
  causal LM.

Which positions are read and which token each predicts is worked out once per batch (``read_index``,
``read_targets``, ``read_owner``), so the full-vocabulary log-softmax runs only at those positions. Tokens of a
sequence are scored from position ``max(prompt_length, 1)`` on (a sequence cut to its response by ``max_length``
has no predictor for its first token). Tests compare both layouts, values and gradients, with plain per-sequence
forwards for each supported architecture.

Only imported by code that already runs torch, so torch is imported at the top here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rlhfctl.models.last_position import final_block_at
from rlhfctl.models.packing import collate_packed_pairs, packing_supported, shared_prefix_length
from rlhfctl.objectives.dpo import PreferenceLogps

# Causal-LM classes whose logits are exactly ``lm_head(base_model(...).last_hidden_state)`` (no soft-capping or
# scaling after the projection), so the projection can be applied at the read positions only.
_PLAIN_HEAD_CLASSES = {"GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM"}


def packs_logprob_pairs(model) -> bool:
    """Whether ``model`` (a causal LM) takes packed pairs with the read-position shortcut (else: two rows)."""
    return type(model).__name__ in _PLAIN_HEAD_CLASSES and packing_supported(model)


class PairLogprobModel(nn.Module):
    """A causal LM returning, per row of a batch from :func:`collate_logprob_pairs`, the summed log-probs of the
    chosen and of the rejected response in that row: ``(rows, 2)``. DDP can wrap it (the forward goes through it);
    ``model`` is the causal LM itself, exported as is."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.packs_pairs = packs_logprob_pairs(model)

    def forward(self, input_ids, attention_mask, position_ids, read_index, read_targets, read_owner):
        """``read_index`` ``(rows, reads)``: the positions whose logits are read; ``read_targets``: the token each
        predicts; ``read_owner`` ``(rows, reads, 2)``: 1.0 where the read belongs to the row's chosen / rejected
        sequence (0 for padding reads). Returns ``(rows, 2)`` fp32 sums."""
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None]  # (rows, 1)
        if self.packs_pairs:
            backbone = self.model.base_model
            with final_block_at(backbone, read_index, attention_mask):
                hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=False).last_hidden_state  # (rows, seq, hidden)
            logits = self.model.get_output_embeddings()(hidden[rows, read_index])  # (rows, reads, vocab)
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False).logits[rows, read_index]  # (rows, reads, vocab)
        logits = logits.float()
        chosen = torch.gather(logits, 2, read_targets[..., None]).squeeze(-1)  # (rows, reads)
        token_logprobs = chosen - torch.logsumexp(logits, dim=-1)
        return torch.einsum("rq,rqk->rk", token_logprobs, read_owner)  # (rows, 2)


def make_logprob_model(model: nn.Module) -> PairLogprobModel:
    return PairLogprobModel(model)


# ----------------------------------------------------------------------------------------------- batches


def _scored_positions(length: int, prompt_length: int) -> range:
    """Positions of a sequence whose token is scored: the response, from position 1 at the earliest."""
    return range(max(prompt_length, 1), length)


def _packed_reads(pair) -> list[tuple[int, int, float, float]]:
    """(read position in the packed row, target token, chosen weight, rejected weight) of one pair."""
    chosen, rejected = pair.chosen_ids, pair.rejected_ids
    shared = shared_prefix_length(chosen, rejected)
    reads: dict[tuple[int, int], list[float]] = {}
    for t in _scored_positions(len(chosen), pair.chosen_prompt_length):
        reads.setdefault((t - 1, chosen[t]), [0.0, 0.0])[0] = 1.0
    for t in _scored_positions(len(rejected), pair.rejected_prompt_length):
        if t < shared:  # a shared token: predicted where the chosen one is
            position = t - 1
        elif t == shared:  # the rejected part's first token: predicted at the last shared position
            position = shared - 1
        else:  # later rejected tokens: the position before, in the rejected part (after all of chosen)
            position = len(chosen) + (t - shared) - 1
        reads.setdefault((position, rejected[t]), [0.0, 0.0])[1] = 1.0
    return [(position, target, weights[0], weights[1]) for (position, target), weights in sorted(reads.items())]


def _row_reads(ids: Sequence[int], prompt_length: int, owner: int) -> list[tuple[int, int, float, float]]:
    weights = (1.0, 0.0) if owner == 0 else (0.0, 1.0)
    return [(t - 1, ids[t], *weights) for t in _scored_positions(len(ids), prompt_length)]


def collate_logprob_pairs(pairs: Sequence[Any], pad_token_id: int, device, *, packed: bool) -> dict[str, Any]:
    """``TokenizedPair``s -> a batch for :class:`PairLogprobModel`: packed (one row per pair, the 4-D mask of
    :func:`rlhfctl.models.packing.collate_packed_pairs`) or two rows per pair (chosen rows then rejected rows,
    right-padded, a 2-D padding mask). Adds ``packed`` and, per pair, ``chosen_tokens`` / ``rejected_tokens``
    ``(B,)``: the number of scored response tokens."""
    if packed:
        batch = collate_packed_pairs(pairs, pad_token_id, device)
        del batch["read_index"], batch["margin"]
        reads = [_packed_reads(pair) for pair in pairs]
    else:
        sequences = [(p.chosen_ids, p.chosen_prompt_length, 0) for p in pairs]
        sequences += [(p.rejected_ids, p.rejected_prompt_length, 1) for p in pairs]
        width = max(len(ids) for ids, _, _ in sequences)
        input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, (ids, _, _) in enumerate(sequences):
            input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, :len(ids)] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        batch = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
                 "position_ids": position_ids.to(device)}
        reads = [_row_reads(ids, prompt_length, owner) for ids, prompt_length, owner in sequences]
    count = max(1, max(len(row) for row in reads))
    padded = [row + [(0, 0, 0.0, 0.0)] * (count - len(row)) for row in reads]  # padding reads weigh nothing
    batch["read_index"] = torch.tensor([[read[0] for read in row] for row in padded], dtype=torch.long).to(device)
    batch["read_targets"] = torch.tensor([[read[1] for read in row] for row in padded], dtype=torch.long).to(device)
    batch["read_owner"] = torch.tensor([[read[2:] for read in row] for row in padded],
                                       dtype=torch.float32).to(device)  # (rows, reads, 2)
    batch["chosen_tokens"] = torch.tensor(
        [float(len(_scored_positions(len(p.chosen_ids), p.chosen_prompt_length))) for p in pairs]).to(device)
    batch["rejected_tokens"] = torch.tensor(
        [float(len(_scored_positions(len(p.rejected_ids), p.rejected_prompt_length))) for p in pairs]).to(device)
    batch["packed"] = packed
    return batch


def pair_logprobs(logprob_model, batch: dict[str, Any]) -> PreferenceLogps:
    """One forward over a batch from :func:`collate_logprob_pairs` -> the pairs' summed log-probs ``(B,)`` each."""
    sums = logprob_model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["read_index"],
                         batch["read_targets"], batch["read_owner"])  # (rows, 2)
    if batch["packed"]:
        chosen, rejected = sums[:, 0], sums[:, 1]
    else:
        half = sums.shape[0] // 2
        chosen, rejected = sums[:half, 0], sums[half:, 1]
    return PreferenceLogps(chosen, rejected, batch["chosen_tokens"], batch["rejected_tokens"])


@torch.no_grad()
def all_pair_logprobs(logprob_model: PairLogprobModel, pairs: Sequence[Any], pad_token_id: int, batch_size: int,
                      device) -> PreferenceLogps:
    """Summed log-probs of every pair, in order, without gradients (batches of similar length; eval mode)."""
    from rlhfctl.models.preference import pair_cost_lengths

    packed = logprob_model.packs_pairs
    lengths = pair_cost_lengths(list(pairs), packed=packed)
    order = sorted(range(len(pairs)), key=lengths.__getitem__)
    result = torch.zeros((4, len(pairs)), dtype=torch.float32)  # chosen, rejected, chosen_tokens, rejected_tokens
    was_training = logprob_model.training
    logprob_model.eval()
    try:
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            batch = collate_logprob_pairs([pairs[i] for i in indices], pad_token_id, device, packed=packed)
            logps = pair_logprobs(logprob_model, batch)
            result[:, indices] = torch.stack([part.float().cpu() for part in logps])
    finally:
        logprob_model.train(was_training)
    return PreferenceLogps(*result)
