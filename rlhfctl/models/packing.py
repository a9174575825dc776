"""A preference pair in one row: the shared prompt once, then the chosen rest, then the rejected rest.

The chosen and rejected sequences of a pair start with the same tokens (the prompt) at the same positions, so
their hidden states there are equal in every layer. A packed row computes them once:

    input_ids     [ p0 p1 p2 | c0 c1 c2 c3 | r0 r1 | pad ]
    position_ids  [ 0  1  2  | 3  4  5  6  | 3  4  | 0   ]
    attention     prefix: causal; chosen: prefix + chosen so far; rejected: prefix + rejected so far (never chosen);
                  padding: itself (no query row is empty, so no NaN)
    read_index    [ 6 (last chosen token), 8 (last rejected token) ]

Each reward is exactly what its own sequence gives alone, and the prefix's gradient is the sum of both replies'
(tests compare scores and gradients with the two-row forward). It also leaves no padding between a short reply
and its longer partner. The shared part is the longest common prefix of the two token sequences, so prompts cut
differently by ``max_length`` still pack correctly (they share less).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PREFIX, CHOSEN, REJECTED, PAD = 0, 1, 2, 3


def shared_prefix_length(first: Sequence[int], second: Sequence[int]) -> int:
    """Length of the longest common prefix of two token id lists."""
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length


def packing_supported(model) -> bool:
    """Whether ``model``'s backbone is one whose final block is computed at read positions (``models.last_position``)
    and takes a custom 4-D boolean attention mask (transformers 5 GPT-2 and the Llama family), with no sliding
    window in any layer (transformers applies none under a custom 4-D mask, so a packed row would see further back
    than its own sequence alone)."""
    from rlhfctl.models.last_position import final_block, has_read_shortcut, has_sliding_window

    backbone = getattr(model, "base_model", None)
    block = final_block(backbone) if backbone is not None else None
    return block is not None and has_read_shortcut(block) and not has_sliding_window(backbone)


def collate_packed_pairs(pairs: Sequence[Any], pad_token_id: int, device) -> dict[str, Any]:
    """``TokenizedPair``s -> one packed row each (see the module docstring).

    Returns input_ids / position_ids ``(B, T)``, attention_mask ``(B, 1, T, T)`` bool, read_index ``(B, 2)``
    (chosen, rejected) and margin ``(B,)``.
    """
    import torch

    rows, positions, segments, reads = [], [], [], []
    for pair in pairs:
        shared = shared_prefix_length(pair.chosen_ids, pair.rejected_ids)
        chosen_rest, rejected_rest = pair.chosen_ids[shared:], pair.rejected_ids[shared:]
        rows.append(pair.chosen_ids[:shared] + chosen_rest + rejected_rest)
        positions.append(list(range(len(pair.chosen_ids))) + list(range(shared, len(pair.rejected_ids))))
        segments.append([PREFIX] * shared + [CHOSEN] * len(chosen_rest) + [REJECTED] * len(rejected_rest))
        chosen_end = len(pair.chosen_ids) - 1
        # A reply that is all prefix (identical replies, or one a prefix of the other) is read inside the prefix.
        rejected_end = len(rows[-1]) - 1 if rejected_rest else len(pair.rejected_ids) - 1
        reads.append([chosen_end, rejected_end])
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([row + [pad_token_id] * (width - len(row)) for row in rows], dtype=torch.long)
    position_ids = torch.tensor([pos + [0] * (width - len(pos)) for pos in positions], dtype=torch.long)
    segment = torch.tensor([seg + [PAD] * (width - len(seg)) for seg in segments], dtype=torch.long)  # (B, T)
    index = torch.arange(width)
    causal = index[:, None] >= index[None, :]  # (T, T): query >= key
    same_part = (segment[:, :, None] == segment[:, None, :]) | (segment[:, None, :] == PREFIX)  # (B, T, T)
    attention_mask = (causal & same_part)[:, None]  # (B, 1, T, T)
    margin = torch.tensor([pair.margin for pair in pairs], dtype=torch.float32)
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
            "position_ids": position_ids.to(device), "read_index": torch.tensor(reads, dtype=torch.long).to(device),
            "margin": margin.to(device)}
