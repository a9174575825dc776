"""Summed response log-probs of preference pairs: the packed row (shared prompt once, final block and vocabulary
projection only where a response token is predicted) and the two-row fallback both give what a plain forward of
each sequence on its own gives, values and gradients, for every architecture the packing supports."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rlhfctl.models.pair_logprobs import (  # noqa: E402
    all_pair_logprobs,
    collate_logprob_pairs,
    make_logprob_model,
    pair_logprobs,
)
from rlhfctl.models.preference import TokenizedPair  # noqa: E402

if int(transformers.__version__.split(".")[0]) < 5:
    pytest.skip("packing needs the transformers 5 final-block shortcut", allow_module_level=True)

PAIRS = [
    TokenizedPair([5, 6, 7, 8, 9, 10], [5, 6, 7, 11], 0.0, 3, 3),  # shared prompt, replies of different lengths
    TokenizedPair([5, 6, 12, 13, 14], [5, 6, 12, 13, 15, 16], 0.0, 2, 2),  # replies share their first 2 tokens
    TokenizedPair([5, 6, 12, 13], [5, 6, 12, 13], 0.0, 2, 2),  # identical replies: everything shared
    TokenizedPair([20, 21], [20, 21, 22, 23, 24], 0.0, 1, 1),  # chosen is a prefix of rejected
    TokenizedPair([30, 31, 32], [40, 41], 0.0, 1, 0),  # nothing shared; rejected cut to its response (no prompt)
    TokenizedPair([7, 8, 9], [7, 8, 3], 0.0, 2, 2),  # one-token replies
]


def reference_logprobs(model, pairs):
    """Each sequence alone, the model's own forward: sum over scored t of log p(ids[t] | ids[:t])."""
    sums = []
    for ids, prompt_length in [(p.chosen_ids, p.chosen_prompt_length) for p in pairs] + [
            (p.rejected_ids, p.rejected_prompt_length) for p in pairs]:
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        logprobs = torch.log_softmax(logits, dim=-1)
        sums.append(sum(logprobs[t - 1, ids[t]] for t in range(max(prompt_length, 1), len(ids))))
    half = len(pairs)
    return torch.stack(sums[:half]), torch.stack(sums[half:])


def gradients(model, chosen, rejected):
    model.zero_grad()
    (chosen * torch.arange(1.0, len(chosen) + 1) - 0.5 * rejected).sum().backward()
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("packed", [True, False])
def test_packed_and_two_row_logprobs_equal_separate_forwards(tiny_causal_lm, kind, packed):
    model = tiny_causal_lm(kind).train()
    logprob_model = make_logprob_model(model)
    assert logprob_model.packs_pairs  # every one of these architectures packs

    expected = reference_logprobs(model, PAIRS)
    expected_grads = gradients(model, *expected)
    batch = collate_logprob_pairs(PAIRS, 0, "cpu", packed=packed)
    got = pair_logprobs(logprob_model, batch)
    assert torch.allclose(got.chosen.double(), expected[0].detach(), atol=1e-5, rtol=0)
    assert torch.allclose(got.rejected.double(), expected[1].detach(), atol=1e-5, rtol=0)
    assert got.chosen_tokens.tolist() == [3.0, 3.0, 2.0, 1.0, 2.0, 1.0]
    assert got.rejected_tokens.tolist() == [1.0, 4.0, 2.0, 4.0, 1.0, 1.0]
    got_grads = gradients(model, got.chosen, got.rejected)
    assert got_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        # log-softmax in fp32 in the library: compared relative to the largest entry
        assert torch.allclose(got_grads[name], grad, rtol=0, atol=1e-5 * float(grad.abs().max())), name


def test_the_packed_row_reads_only_response_predicting_positions():
    batch = collate_logprob_pairs(PAIRS[:1], 0, "cpu", packed=True)
    # row [5 6 7 | 8 9 10 | 11]: chosen 8, 9, 10 predicted at 2, 3, 4; rejected 11 predicted at 2 (last prompt token)
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 8, 9, 10, 11]
    assert batch["read_index"][0].tolist() == [2, 2, 3, 4]
    assert batch["read_targets"][0].tolist() == [8, 11, 9, 10]
    assert batch["read_owner"][0].tolist() == [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]
    shared = collate_logprob_pairs(PAIRS[2:3], 0, "cpu", packed=True)  # identical replies: each read counts twice
    assert shared["read_owner"][0].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_models_without_the_shortcut_use_two_rows(tiny_causal_lm):
    model = tiny_causal_lm("gpt2", reorder_and_upcast_attn=True)
    logprob_model = make_logprob_model(model)
    assert not logprob_model.packs_pairs
    result = all_pair_logprobs(logprob_model, PAIRS, 0, batch_size=4, device="cpu")
    expected = reference_logprobs(model, PAIRS)
    assert torch.allclose(result.chosen.double(), expected[0].detach(), atol=1e-5, rtol=0)
    assert torch.allclose(result.rejected.double(), expected[1].detach(), atol=1e-5, rtol=0)


def test_all_pair_logprobs_keeps_the_order_and_the_training_mode(tiny_causal_lm):
    model = tiny_causal_lm("llama").train()
    logprob_model = make_logprob_model(model)
    result = all_pair_logprobs(logprob_model, PAIRS, 0, batch_size=4, device="cpu")  # sorted into 2 batches
    expected = reference_logprobs(model, PAIRS)
    assert torch.allclose(result.chosen.double(), expected[0].detach(), atol=1e-5, rtol=0)
    assert result.rejected_tokens.tolist() == [1.0, 4.0, 2.0, 4.0, 1.0, 1.0]
    assert logprob_model.training and model.training
