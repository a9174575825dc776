"""Rollout pieces on the tiny model: log-prob and score read-out positions, the rollout batch."""

from __future__ import annotations

import pytest
import torch

from rlhfctl.models.generation import Generation, generate_responses, tokenize_prompts
from rlhfctl.models.rollout import ScoreSettings, collect_rollout, policy_logprobs, score_sequences
from rlhfctl.models.scoring import TokenScoreModel


def test_forward_logprobs_match_what_generate_sampled_from_under_left_padding(tiny):
    tokenizer, policy, _ = tiny
    ids, mask = tokenize_prompts(["\n\nHuman: a longer question here\n\nAssistant:", "hi"], tokenizer, 64)
    torch.manual_seed(2)
    temperature = 0.7
    out = policy.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=True, temperature=temperature, top_k=0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=[], output_logits=True, return_dict_in_generate=True,
    )
    sequences = out.sequences
    full_mask = torch.cat([mask, torch.ones_like(sequences[:, ids.shape[1]:])], dim=1)
    generate_logits = torch.stack(out.logits, dim=1)  # (batch, 5, vocab): raw logits at each generation step
    expected = torch.log_softmax(generate_logits / temperature, -1)
    expected = expected.gather(2, sequences[:, ids.shape[1]:].unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        logprobs, entropy = policy_logprobs(
            policy, sequences, full_mask, ids.shape[1], temperature, return_entropy=True
        )
    assert torch.allclose(logprobs, expected, atol=1e-4)
    assert entropy.shape == logprobs.shape and (entropy > 0).all()


def test_reward_is_read_at_the_last_real_token(tiny):
    tokenizer, _, scorer = tiny
    reward_model = TokenScoreModel(scorer)
    eos = tokenizer.eos_token_id
    texts = ["\n\nHuman: hello\n\nAssistant:", "hi"]
    ids, mask = tokenize_prompts(texts, tokenizer, 64)
    responses = torch.tensor([[17, eos, 5, 5], [17, 18, 19, 20]])  # stop in the middle / no stop
    from rlhfctl.objectives.ppo import truncate_after_stop

    truncated = truncate_after_stop(responses, [eos], tokenizer.pad_token_id)
    generation = Generation(
        torch.cat([ids, truncated.response_ids], 1), torch.cat([mask, truncated.response_mask.long()], 1),
        ids.shape[1], truncated,
    )
    raw, processed = score_sequences(reward_model, generation, ScoreSettings(missing_eos_penalty=1.0))
    # reference: the classification model's own output on each unpadded sequence
    for row, text in enumerate(texts):
        real = tokenizer(text)["input_ids"] + truncated.response_ids[row, : int(truncated.lengths[row])].tolist()
        with torch.no_grad():
            own = scorer(input_ids=torch.tensor([real])).logits[0, 0]
        assert raw[row].item() == pytest.approx(own.item(), abs=1e-4)
    assert processed.tolist() == pytest.approx([raw[0].item(), raw[1].item() - 1.0])


def test_collect_rollout_shapes_and_zeroed_padding(tiny, sampling):
    tokenizer, policy, scorer = tiny
    value_model = TokenScoreModel(scorer)
    ids, mask = tokenize_prompts(["\n\nHuman: hello\n\nAssistant:", "hi", "ok"], tokenizer, 64)
    torch.manual_seed(3)
    generation = generate_responses(policy, ids, mask, sampling(tokenizer))
    raw, scores = score_sequences(value_model, generation, ScoreSettings())
    rollout = collect_rollout(
        generation, raw, scores, policy=policy, reference=policy, value_model=value_model, temperature=0.7,
        chunk_size=2,
    )
    response_len = generation.query_responses.shape[1] - generation.prompt_len
    for tensor in (rollout.old_logprobs, rollout.ref_logprobs, rollout.old_values):
        assert tensor.shape == (3, response_len)
        assert (tensor[rollout.response_mask == 0] == 0).all()
    assert torch.allclose(rollout.old_logprobs, rollout.ref_logprobs)  # same model: k1 = 0
    assert (rollout.old_logprobs[rollout.response_mask == 1] < 0).all()




def test_old_logprobs_come_from_the_decoder_only_at_its_temperature(tiny, sampling):
    tokenizer, policy, scorer = tiny
    value_model = TokenScoreModel(scorer)
    ids, mask = tokenize_prompts(["\n\nHuman: hello\n\nAssistant:", "hi"], tokenizer, 64)
    torch.manual_seed(4)
    generation = generate_responses(policy, ids, mask, sampling(tokenizer))
    assert generation.response_logprobs is not None and generation.logprobs_temperature == 0.7
    raw, scores = score_sequences(value_model, generation, ScoreSettings())
    at_other = collect_rollout(generation, raw, scores, policy=policy, reference=policy, value_model=value_model,
                               temperature=1.0, chunk_size=2)
    assert torch.allclose(at_other.old_logprobs, at_other.ref_logprobs)  # computed by a forward at T = 1.0
    assert not torch.allclose(at_other.old_logprobs, generation.response_logprobs)


class _NoLogitsToKeep(torch.nn.Module):
    """The same causal LM without transformers' ``logits_to_keep`` argument: full-sequence logits."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, use_cache):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache)


def test_logprobs_from_the_response_positions_only_equal_the_full_sequences(tiny, sampling):
    from rlhfctl.models.rollout import accepts_logits_to_keep

    tokenizer, policy, _ = tiny
    ids, mask = tokenize_prompts(["\n\nHuman: a longer question here\n\nAssistant:", "hi"], tokenizer, 64)
    torch.manual_seed(5)
    generation = generate_responses(policy, ids, mask, sampling(tokenizer, max_new_tokens=8))
    full = _NoLogitsToKeep(policy)
    assert accepts_logits_to_keep(policy) and not accepts_logits_to_keep(full)
    with torch.no_grad():
        kept = policy_logprobs(policy, generation.query_responses, generation.attention_mask, generation.prompt_len,
                               0.7, return_entropy=True)
        every = policy_logprobs(full, generation.query_responses, generation.attention_mask, generation.prompt_len,
                                0.7, return_entropy=True)
    assert torch.allclose(kept[0], every[0], atol=1e-6) and torch.allclose(kept[1], every[1], atol=1e-6)


# ----------------------------------------------------------------------------------------------- GRPO groups packed


def _groups_batch(group: int = 3):
    """Three prompts of different real lengths, left-padded to 6, each with ``group`` completions of uneven lengths
    (stop token 2 at different steps, padding 0 after it; one stops at its first token)."""
    from rlhfctl.objectives.ppo import truncate_after_stop

    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    prompt_ids = torch.zeros(len(prompts), 6, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_ids)
    for row, ids in enumerate(prompts):
        prompt_ids[row, 6 - len(ids):], prompt_mask[row, 6 - len(ids):] = torch.tensor(ids), 1
    generator = torch.Generator().manual_seed(0)
    responses = torch.randint(3, 50, (len(prompts) * group, 5), generator=generator)
    responses[0, 1], responses[4, 3], responses[7, 0] = 2, 2, 2
    truncated = truncate_after_stop(responses, [2], 0)
    return Generation(torch.cat([prompt_ids.repeat_interleave(group, 0), truncated.response_ids], 1),
                      torch.cat([prompt_mask.repeat_interleave(group, 0), truncated.response_mask.long()], 1), 6,
                      truncated)


def _forward_rows(model) -> list[int]:
    """The batch sizes ``model``'s forward is called with, appended as it runs."""
    rows: list[int] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]),
                                    with_kwargs=True)
    return rows


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_grouped_logprobs_entropy_and_gradients_equal_each_completions_own_row(tiny_causal_lm, kind):
    """A group's prompt once, its completions behind it (``group_size``): the per-token log-probs, entropy and the
    policy's gradients are those of the rows, one completion each (fp64 model, log-softmax in fp32)."""
    from rlhfctl.models.rollout import packs_groups

    model = tiny_causal_lm(kind).train()
    generation = _groups_batch()
    mask = generation.truncated.response_mask
    weights = torch.arange(1.0, mask.numel() + 1).view_as(mask) * mask  # every real token's gradient counts
    calls = _forward_rows(model)
    results = {}
    for group_size in (1, 3):
        model.zero_grad()
        logprobs, entropy = policy_logprobs(model, generation.query_responses, generation.attention_mask, 6, 0.7,
                                            return_entropy=True, group_size=group_size)
        (logprobs * weights).sum().backward()
        results[group_size] = (logprobs * mask, entropy * mask,
                               {name: param.grad.clone() for name, param in model.named_parameters()})
    assert packs_groups(model) and calls == [9, 3]  # nine rows, then three packed groups
    rows, packed = results[1], results[3]
    assert torch.allclose(packed[0], rows[0], atol=1e-6, rtol=0)
    assert torch.allclose(packed[1], rows[1], atol=1e-6, rtol=0)
    assert packed[2].keys() == rows[2].keys()
    for name, grad in rows[2].items():
        assert torch.allclose(packed[2][name], grad, rtol=0, atol=1e-6 * float(grad.abs().max())), name


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_grouped_reward_scores_equal_each_completions_own_row(tiny_classifier, kind):
    from rlhfctl.models.rollout import reward_scores

    reward_model = TokenScoreModel(tiny_classifier(kind).eval())
    generation = _groups_batch()
    calls = _forward_rows(reward_model.model.base_model)
    rows = reward_scores(reward_model, generation)
    packed = reward_scores(reward_model, generation, group_size=3)
    assert calls == [9, 3]
    assert torch.allclose(packed, rows, atol=1e-6, rtol=0) and packed.shape == (9,)


def test_a_model_with_a_sliding_window_keeps_the_rows(tiny_causal_lm, tiny_classifier):
    """No packing where transformers would drop the window under a custom mask: the same values from the rows."""
    from rlhfctl.models.rollout import packs_groups, reward_scores

    model = tiny_causal_lm("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0).eval()
    assert not packs_groups(model)
    generation = _groups_batch()
    calls = _forward_rows(model)
    with torch.no_grad():
        grouped, _ = policy_logprobs(model, generation.query_responses, generation.attention_mask, 6, 0.7,
                                     group_size=3)
        rows, _ = policy_logprobs(model, generation.query_responses, generation.attention_mask, 6, 0.7)
    assert calls == [9, 9] and torch.equal(grouped, rows)
    scorer = TokenScoreModel(tiny_classifier("qwen2", use_sliding_window=True, sliding_window=4,
                                             max_window_layers=0).eval())
    assert torch.equal(reward_scores(scorer, generation, group_size=3), reward_scores(scorer, generation))
