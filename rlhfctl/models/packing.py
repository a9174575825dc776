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

A GRPO group is the same idea with ``G`` continuations of one prompt (:func:`pack_groups`): one row per group,
the left-padded prompt once, then each completion in a slot of the batch's response width, every slot attending
the prompt's real tokens and itself (:func:`block_attention_mask` is the one rule both layouts use).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PREFIX, CHOSEN, REJECTED, PAD = 0, 1, 2, -1  # segment ids: a continuation k > 0 is its own segment


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
    and takes a custom 4-D boolean attention mask (transformers 5 GPT-2 and the Llama family, attention through
    ``sdpa`` or ``eager``: flash-attention kernels take no such mask), with no sliding window in any layer
    (transformers applies none under a custom 4-D mask, so a packed row would see further back than its own
    sequence alone)."""
    from rlhfctl.models.last_position import final_block, has_read_shortcut, has_sliding_window

    backbone = getattr(model, "base_model", None)
    block = final_block(backbone) if backbone is not None else None
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None) or "sdpa"
    return (block is not None and has_read_shortcut(block) and not has_sliding_window(backbone)
            and attention in ("sdpa", "eager"))


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
    attention_mask = block_attention_mask(segment)
    margin = torch.tensor([pair.margin for pair in pairs], dtype=torch.float32)
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
            "position_ids": position_ids.to(device), "read_index": torch.tensor(reads, dtype=torch.long).to(device),
            "margin": margin.to(device)}


def block_attention_mask(segment):
    """The packed rows' attention: ``segment`` ``(B, T)`` (``PREFIX``, a continuation's id, or ``PAD``) ->
    ``(B, 1, T, T)`` bool. A query attends the earlier keys (itself included) of its own segment and of the shared
    prefix; padding attends only padding (so no query row is empty and nothing real sees it)."""
    import torch

    index = torch.arange(segment.shape[1], device=segment.device)
    causal = index[:, None] >= index[None, :]  # (T, T): query >= key
    same_part = (segment[:, :, None] == segment[:, None, :]) | (segment[:, None, :] == PREFIX)  # (B, T, T)
    return (causal & same_part)[:, None]


def pack_groups(query_responses, attention_mask, prompt_len: int, group: int) -> dict[str, Any]:
    """Rows of GRPO groups -> one packed row per group: the shared left-padded prompt once, then each completion.

    ``query_responses`` / ``attention_mask`` ``(B, prompt_len + R)``, B a multiple of ``group``, each run of
    ``group`` consecutive rows the same prompt (their first ``prompt_len`` tokens are checked). A completion keeps
    its whole slot of ``R`` (its padding after a stop token included), so every packed row has the same layout:

        input_ids     [ pad p0 p1 | a0 a1 pad | b0 b1 b2 | ... ]   (B / group, prompt_len + group * R)
        position_ids  [ 0   0  1  | 2  3  4   | 2  3  4  | ... ]   a completion goes on from the prompt's length
        segments      [ PAD P  P  | 1  1  1   | 2  2  2  | ... ]   attention: :func:`block_attention_mask`

    A completion token attends exactly what it attends in its own row (the prompt's real tokens and its own
    earlier tokens), at the same position, so its hidden states are those of the unpacked forward. Returns
    ``input_ids``, ``attention_mask`` ``(B / group, 1, T, T)`` bool and ``position_ids``.
    """
    import torch

    rows, width = query_responses.shape
    if rows % group:
        raise ValueError(f"{rows} rows do not split into groups of {group}")
    groups, response_len = rows // group, width - prompt_len
    prompts = query_responses[::group, :prompt_len]  # (groups, P)
    if not torch.equal(query_responses[:, :prompt_len].view(groups, group, prompt_len), prompts[:, None].expand(
            -1, group, -1)):
        raise ValueError("the rows of a group do not share their prompt")
    prompt_mask = attention_mask[::group, :prompt_len].bool()  # (groups, P)
    input_ids = torch.cat([prompts, query_responses[:, prompt_len:].reshape(groups, group * response_len)], dim=1)
    prompt_positions = prompt_mask.long().cumsum(-1) - 1
    slot_positions = prompt_mask.sum(-1, keepdim=True) + torch.arange(response_len, device=prompt_mask.device)
    position_ids = torch.cat([prompt_positions.clamp(min=0), slot_positions.repeat(1, group)], dim=1)
    slots = torch.arange(1, group + 1, device=prompt_mask.device).repeat_interleave(response_len)  # (G * R,)
    segment = torch.cat([torch.where(prompt_mask, PREFIX, PAD), slots.expand(groups, -1)], dim=1)
    return {"input_ids": input_ids, "attention_mask": block_attention_mask(segment), "position_ids": position_ids}


def packing_pays(prompt_len: int, response_len: int, group: int, hidden_size: int) -> bool:
    """Whether a packed group (:func:`pack_groups`) costs a transformer layer less than its ``group`` rows.

    Per layer, a token's projections and MLP cost ~``24 d^2`` FLOPs (GPT-2's and Llama's shapes, ``d`` =
    ``hidden_size``) and every query-key pair ~``4 d`` (scores and weighted values; the attention runs over every
    pair of a row under a mask). Packing saves ``(group - 1) * prompt_len`` tokens, but its row of ``prompt_len +
    group * response_len`` tokens has more pairs than the rows together; with long completions in large groups the
    pairs win (and so would the attention's memory), so the rows are kept then. In units of ``4 d``:
    ``6 d * tokens + pairs``, packed against the rows."""
    packed = prompt_len + group * response_len
    row = prompt_len + response_len
    return 6 * hidden_size * packed + packed**2 < group * (6 * hidden_size * row + row**2)


def group_predictor_positions(prompt_len: int, response_len: int, group: int, device):
    """``(group * R,)``: where, in a row of :func:`pack_groups`, the logits that score each completion token are:
    a completion's first token at the prompt's last position, token ``j > 0`` of slot ``k`` at the position before
    it in that slot. The same for every packed row; the slots in order."""
    import torch

    within = torch.arange(response_len, device=device)  # (R,)
    slot_starts = prompt_len + response_len * torch.arange(group, device=device)  # (G,)
    positions = slot_starts[:, None] + within[None, :] - 1  # (G, R)
    positions[:, 0] = prompt_len - 1
    return positions.reshape(-1)


def group_last_positions(prompt_len: int, response_len: int, lengths):
    """Where each completion's last real token is in its row of :func:`pack_groups`: ``lengths`` ``(B / group,
    group)``, the completions' real token counts (>= 1) -> positions of the same shape."""
    import torch

    group = lengths.shape[-1]
    slot_starts = prompt_len + response_len * torch.arange(group, device=lengths.device)
    return slot_starts + lengths - 1
