"""Scalar scores: the reward at each row's last real token (any padding), the per-position score model."""

from __future__ import annotations

import pytest
import torch

from rlhfctl.errors import UserError
from rlhfctl.models.loading import load_reward_model, load_tokenizer
from rlhfctl.models.scoring import TokenScoreModel, make_scorer


def test_score_is_read_at_the_last_real_token_with_right_or_left_padding(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_reward_model(tiny_model_dir, tokenizer).eval()
    scorer = make_scorer(model)
    sequences = [[5, 6, 7, 8, 9, tokenizer.eos_token_id], [10, 11, tokenizer.eos_token_id]]
    pad = tokenizer.pad_token_id
    right = torch.tensor([sequences[0], sequences[1] + [pad] * 3])
    right_mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    left = torch.tensor([sequences[0], [pad] * 3 + sequences[1]])
    left_mask = torch.tensor([[1] * 6, [0] * 3 + [1] * 3])
    with torch.no_grad():
        right_scores = scorer(right, right_mask)
        left_scores = scorer(left, left_mask)
        alone = [scorer(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item() for ids in sequences]
        hf_pooled = model(input_ids=right, attention_mask=right_mask).logits[:, 0]  # pad != eos here
    assert right_scores.tolist() == pytest.approx(alone, abs=1e-5)
    assert left_scores.tolist() == pytest.approx(alone, abs=1e-5)
    assert right_scores.tolist() == pytest.approx(hf_pooled.tolist(), abs=1e-5)


def test_score_model_refuses_a_model_without_score_head():
    class NoHead(torch.nn.Module):
        base_model_prefix = "backbone"

    with pytest.raises(UserError, match="score head"):
        TokenScoreModel(NoHead())
