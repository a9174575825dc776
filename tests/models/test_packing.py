"""Packed preference pairs (shared prompt once) give the two-row forward's rewards and gradients."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rlhfctl.models import preference  # noqa: E402
from rlhfctl.models.packing import collate_packed_pairs, packing_supported, shared_prefix_length  # noqa: E402
from rlhfctl.models.scoring import make_scorer  # noqa: E402

if int(transformers.__version__.split(".")[0]) < 5:
    pytest.skip("packing needs the transformers 5 final-block shortcut", allow_module_level=True)

PAIRS = [
    preference.TokenizedPair([5, 6, 7, 8, 9, 10], [5, 6, 7, 11], 0.0),  # shared prompt, replies of different lengths
    preference.TokenizedPair([5, 6, 12, 13], [5, 6, 12, 13], 1.0),  # identical replies: everything shared
    preference.TokenizedPair([20, 21], [20, 21, 22, 23, 24], 0.5),  # chosen is a prefix of rejected
    preference.TokenizedPair([30, 31, 32], [40, 41], 0.0),  # nothing shared (prompts cut differently by max_length)
    preference.TokenizedPair([7], [7, 8], 0.0),
]


def test_shared_prefix_length():
    assert shared_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert shared_prefix_length([1, 2], [1, 2, 3]) == 2
    assert shared_prefix_length([1], [2]) == 0
    assert shared_prefix_length([], [1]) == 0


def test_the_packed_layout_of_one_pair():
    batch = collate_packed_pairs([PAIRS[0], PAIRS[4]], pad_token_id=0, device="cpu")
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 8, 9, 10, 11]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 3]
    assert batch["read_index"].tolist() == [[5, 6], [0, 1]]
    assert batch["input_ids"][1].tolist() == [7, 8, 0, 0, 0, 0, 0]
    mask = batch["attention_mask"][0, 0]  # (T, T), True = the query (row) attends the key (column)
    assert mask[6].tolist() == [True, True, True, False, False, False, True]  # rejected: prompt + itself only
    assert mask[5].tolist() == [True] * 6 + [False]  # last chosen token: prompt + chosen
    padded = batch["attention_mask"][1, 0]
    assert padded.any(dim=-1).all()  # every query row attends something: no NaN from an empty softmax
    assert not padded[:2, 2:].any()  # real tokens never attend padding


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_packed_rewards_and_gradients_equal_the_two_row_forward(tiny_classifier, kind):
    model = tiny_classifier(kind).train()
    scorer = make_scorer(model)
    assert scorer.packs_pairs and preference.collate_for(scorer) is collate_packed_pairs

    def rewards_and_grads(collate):
        model.zero_grad()
        chosen, rejected = preference.score_pairs(scorer, collate(PAIRS, 0, "cpu"))
        (chosen * 1.5 - rejected * torch.arange(1.0, 6.0)).sum().backward()
        return torch.stack([chosen, rejected]).detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                          if p.grad is not None}

    expected, expected_grads = rewards_and_grads(preference.collate_pairs)
    got, got_grads = rewards_and_grads(collate_packed_pairs)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)  # the scorer returns fp32
    assert got_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        # fp64 models, but Llama/Qwen2's RMSNorm computes in fp32 and the two layouts add in other orders
        assert torch.allclose(got_grads[name], grad, rtol=0, atol=1e-6 * float(grad.abs().max())), name


def test_models_without_the_shortcut_keep_two_rows(tiny_classifier):
    model = tiny_classifier("gpt2", reorder_and_upcast_attn=True)
    assert not packing_supported(model)
    assert preference.collate_for(make_scorer(model)) is preference.collate_pairs


def test_size_weighted_shares_give_the_gradient_of_the_whole_step(tiny_classifier):
    """The RM recipe's train_loop re-cuts a step's pairs into even-cost shares; weighting each share's mean loss by
    ``len(share) * workers / len(step)`` makes the workers' averaged gradient the mean over the whole step."""
    from rlhfctl.objectives.rm import pairwise_loss
    from rlhfctl.training.batching import balanced_shares

    model = tiny_classifier("gpt2").train()
    scorer = make_scorer(model)
    step = list(range(len(PAIRS)))
    shares = balanced_shares(step, preference.pair_cost_lengths(PAIRS, packed=True), 2)

    def gradient(rows, weight):
        model.zero_grad()
        chosen, rejected = preference.score_pairs(scorer, collate_packed_pairs([PAIRS[i] for i in rows], 0, "cpu"))
        (pairwise_loss(chosen, rejected, torch.tensor([PAIRS[i].margin for i in rows])).loss * weight).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    whole = gradient(step, 1.0)
    averaged = sum(gradient(share, len(share) * 2 / len(step)) for share in shares) / 2  # what DDP averages
    assert len(shares[0]) != len(shares[1])  # uneven shares: the weighting is what makes this hold
    assert torch.allclose(averaged, whole, atol=1e-6, rtol=1e-6)


def test_the_packed_layout_of_a_grpo_group():
    from rlhfctl.models.packing import group_last_positions, group_predictor_positions, pack_groups

    # one prompt [7 8] left-padded to 3, two completions of width 2: [4 5] and [6 pad]
    ids = torch.tensor([[0, 7, 8, 4, 5], [0, 7, 8, 6, 0]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 1, 0]])
    packed = pack_groups(ids, mask, 3, 2)
    assert packed["input_ids"].tolist() == [[0, 7, 8, 4, 5, 6, 0]]
    assert packed["position_ids"].tolist() == [[0, 0, 1, 2, 3, 2, 3]]  # each completion goes on from the prompt
    attends = packed["attention_mask"][0, 0].int().tolist()
    assert attends == [[1, 0, 0, 0, 0, 0, 0],   # the prompt's padding: itself only
                       [0, 1, 0, 0, 0, 0, 0],   # the prompt: causal over its real tokens
                       [0, 1, 1, 0, 0, 0, 0],
                       [0, 1, 1, 1, 0, 0, 0],   # first completion: the prompt and itself
                       [0, 1, 1, 1, 1, 0, 0],
                       [0, 1, 1, 0, 0, 1, 0],   # second completion: the prompt and itself, never the first
                       [0, 1, 1, 0, 0, 1, 1]]
    # the logits scoring [4 5] are at 2 (the prompt's last position) and 3; those scoring [6 pad] at 2 and 5
    assert group_predictor_positions(3, 2, 2, "cpu").tolist() == [2, 3, 2, 5]
    assert group_last_positions(3, 2, torch.tensor([[2, 1]])).tolist() == [[4, 5]]


def test_rows_of_a_group_must_share_their_prompt():
    from rlhfctl.models.packing import pack_groups

    ids = torch.tensor([[7, 8, 4], [7, 9, 4], [1, 2, 3], [1, 2, 3]])
    with pytest.raises(ValueError, match="share their prompt"):
        pack_groups(ids, torch.ones_like(ids), 2, 2)
    with pytest.raises(ValueError, match="groups of 3"):
        pack_groups(ids, torch.ones_like(ids), 2, 3)


def test_a_group_is_packed_only_where_it_costs_less():
    from rlhfctl.models.packing import packing_pays

    # (prompt, response, group, hidden): the harness's tiny and 14.6 M models, 26-token prompts, 32 tokens
    assert packing_pays(26, 32, 4, 64) and packing_pays(26, 32, 8, 384)
    # long completions in a large group: the packed row's attention pairs outweigh the prompt tokens saved
    assert not packing_pays(26, 128, 8, 64) and not packing_pays(26, 128, 8, 384)
    assert packing_pays(512, 128, 8, 384)  # a long prompt pays for them
    # by hand: packed 6 * 64 * 154 + 154^2 = 82,852 < rows 4 * (6 * 64 * 58 + 58^2) = 102,544
    assert packing_pays(26, 32, 4, 64) == (82_852 < 102_544)


def test_models_on_flash_attention_kernels_are_not_packed(tiny_classifier):
    """A packed row needs its 4-D boolean mask honoured: sdpa and eager do, flash-attention kernels take none."""
    model = tiny_classifier("gpt2")
    assert model.config._attn_implementation in ("sdpa", "eager") and packing_supported(model)
    model.config._attn_implementation_internal = "flash_attention_2"
    assert model.config._attn_implementation == "flash_attention_2" and not packing_supported(model)
