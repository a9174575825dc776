"""Preference pairs as token ids, batches and rewards: what RM training, ``rm eval`` and ``rm score`` share.

Texts are ``format_prompt(prompt) + response + EOS``; a text longer than ``max_length`` loses tokens from the
**left of the prompt**, so the response end, where the reward is read, is always kept
(:func:`rlhfctl.objectives.rm.truncate_keep_response_end`). A batch is either packed (one row per pair, the shared
prompt computed once: :mod:`rlhfctl.models.packing`) or two rows per pair, whichever the scorer's model supports;
both give the same rewards. :func:`length_bias_metrics` says how much the rewards follow reply length (RM
validation and ``rm eval``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from rlhfctl.training.checkpoint import unwrap_model


class TokenizedPair(NamedTuple):
    chosen_ids: list[int]  # prompt + chosen reply + EOS, cut to max_length
    rejected_ids: list[int]  # prompt + rejected reply + EOS, cut to max_length
    margin: float  # the row's margin (0 when it has none)
    chosen_prompt_length: int = 0  # prompt tokens at the start of chosen_ids (what max_length left of the prompt)
    rejected_prompt_length: int = 0  # the same for rejected_ids


def tokenize_pairs(rows: list[dict], tokenizer, max_length: int) -> list[TokenizedPair]:
    """Rows ``{"prompt", "chosen", "rejected", "margin"}`` -> token ids, prompt cut from the left to fit."""
    from rlhfctl.data.prompting import format_prompt, has_chat_template
    from rlhfctl.objectives.rm import truncate_keep_response_end

    if not rows:
        return []
    prompts = [format_prompt(row["prompt"], tokenizer) for row in rows]
    add_special = not has_chat_template(tokenizer)  # a chat template already wrote BOS and friends
    prompt_ids = tokenizer(prompts, add_special_tokens=add_special)["input_ids"]
    chosen_ids = tokenizer([row["chosen"] for row in rows], add_special_tokens=False)["input_ids"]
    rejected_ids = tokenizer([row["rejected"] for row in rows], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id]
    pairs = []
    for row, prompt, chosen, rejected in zip(rows, prompt_ids, chosen_ids, rejected_ids):
        chosen_full = truncate_keep_response_end(prompt, chosen + eos, max_length)
        rejected_full = truncate_keep_response_end(prompt, rejected + eos, max_length)
        pairs.append(TokenizedPair(chosen_full, rejected_full, float(row.get("margin") or 0.0),
                                   max(0, len(chosen_full) - len(chosen) - 1),
                                   max(0, len(rejected_full) - len(rejected) - 1)))
    return pairs


def collate_pairs(pairs: list[TokenizedPair], pad_token_id: int, device) -> dict[str, Any]:
    """Chosen rows then rejected rows, right-padded to the batch's longest: input_ids/attention_mask ``(2B, T)``."""
    import torch

    sequences = [pair.chosen_ids for pair in pairs] + [pair.rejected_ids for pair in pairs]
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
    margin = torch.tensor([pair.margin for pair in pairs], dtype=torch.float32)
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), "margin": margin.to(device)}


def collate_for(scorer):
    """The batch layout ``scorer`` takes: packed pairs (``models.packing``: the shared prompt computed once) where
    its model supports them, else :func:`collate_pairs`. Both give the same rewards."""
    from rlhfctl.models.packing import collate_packed_pairs

    return collate_packed_pairs if unwrap_model(scorer).packs_pairs else collate_pairs


def score_pairs(scorer, batch: dict[str, Any]):
    """One forward over chosen and rejected together -> (chosen_rewards, rejected_rewards), each ``(B,)``."""
    if "read_index" in batch:  # packed: one row per pair
        rewards = scorer(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["read_index"])
        return rewards[:, 0], rewards[:, 1]  # (B, 2) -> chosen, rejected
    rewards = scorer(batch["input_ids"], batch["attention_mask"])  # (2B,)
    half = rewards.shape[0] // 2
    return rewards[:half], rewards[half:]


def pair_cost_lengths(pairs: list[TokenizedPair], *, packed: bool) -> list[int]:
    """The padded width each pair gives its batch: its packed row (the shared prefix once) or its longer sequence."""
    from rlhfctl.models.packing import shared_prefix_length

    if packed:
        return [len(p.chosen_ids) + len(p.rejected_ids) - shared_prefix_length(p.chosen_ids, p.rejected_ids)
                for p in pairs]
    return [max(len(pair.chosen_ids), len(pair.rejected_ids)) for pair in pairs]


def score_all(scorer, pairs: list[TokenizedPair], pad_token_id: int, batch_size: int, device) -> list[tuple[float, float]]:
    """(chosen, rejected) rewards of every pair, in order, without gradients (batches sorted by length)."""
    import torch

    lengths = pair_cost_lengths(pairs, packed=False)
    order = sorted(range(len(pairs)), key=lengths.__getitem__)
    results: list[tuple[float, float]] = [(0.0, 0.0)] * len(pairs)
    collate = collate_for(scorer)
    was_training = scorer.training
    scorer.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            chosen, rejected = score_pairs(scorer, collate([pairs[i] for i in indices], pad_token_id, device))
            for index, c, r in zip(indices, chosen.tolist(), rejected.tolist()):
                results[index] = (c, r)
    scorer.train(was_training)
    return results


def response_lengths(rows: list[dict], tokenizer, max_length: int) -> list[tuple[int, int]]:
    """(chosen, rejected) reply lengths in tokens as they are scored (EOS included, at most ``max_length``), one per
    row of :func:`tokenize_pairs`: what the reward-model length-bias check ranks rewards against."""
    if not rows:
        return []
    chosen = tokenizer([row["chosen"] for row in rows], add_special_tokens=False)["input_ids"]
    rejected = tokenizer([row["rejected"] for row in rows], add_special_tokens=False)["input_ids"]
    return [(min(len(c) + 1, max_length), min(len(r) + 1, max_length)) for c, r in zip(chosen, rejected)]


def length_bias_metrics(rewards: list[tuple[float, float]], lengths: list[tuple[int, int]]) -> dict[str, float]:
    """``length_bias_spearman`` (rank correlation of reward and reply length over every chosen and rejected reply)
    and ``longer_wins_accuracy`` (the accuracy of "the longer reply wins") of (chosen, rejected) rewards and
    lengths, pair by pair; a value that is undefined (all lengths equal, no pairs) is left out."""
    from rlhfctl.monitor import length_bias

    bias = length_bias([c for c, _ in rewards], [r for _, r in rewards], [c for c, _ in lengths],
                       [r for _, r in lengths])
    found = {"length_bias_spearman": bias.spearman, "longer_wins_accuracy": bias.longer_wins_accuracy}
    return {name: value for name, value in found.items() if value is not None}
