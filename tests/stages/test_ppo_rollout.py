"""Rollout pieces on the tiny model: left padding, generation, truncation, log-prob and score read-out positions."""

from __future__ import annotations

import pytest
import torch

from rlhfctl.errors import UserError
from rlhfctl.stages import ppo_rollout as pr


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    scorer = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    return tokenizer, policy, scorer


def _sampling(tokenizer, **overrides):
    settings = dict(
        max_new_tokens=6, temperature=0.7, top_k=0, top_p=1.0, do_sample=True,
        stop_ids=(tokenizer.eos_token_id,), pad_token_id=tokenizer.pad_token_id,
    )
    settings.update(overrides)
    return pr.SamplingSettings(**settings)


def test_prompts_are_left_padded_and_left_truncated(tiny):
    tokenizer = tiny[0]
    long_ids = tokenizer("one two three four five six seven")["input_ids"]
    short_ids = tokenizer("hi")["input_ids"]
    ids, mask = pr.tokenize_prompts(["one two three four five six seven", "hi"], tokenizer, max_prompt_tokens=4)
    assert ids.shape == (2, 4)
    assert ids[0].tolist() == long_ids[-4:]  # the end of the prompt (where the assistant turn opens) is kept
    assert ids[1, -len(short_ids):].tolist() == short_ids
    assert ids[1, : 4 - len(short_ids)].tolist() == [tokenizer.pad_token_id] * (4 - len(short_ids))
    assert mask[1].tolist() == [0] * (4 - len(short_ids)) + [1] * len(short_ids)


def test_stop_token_ids(tiny):
    tokenizer = tiny[0]
    assert pr.stop_token_ids(tokenizer, None) == [tokenizer.eos_token_id]
    assert pr.stop_token_ids(tokenizer, "<|pad|>") == [tokenizer.pad_token_id]
    with pytest.raises(UserError, match="exactly one token"):
        pr.stop_token_ids(tokenizer, "a long stop sequence that is many tokens")


def test_generation_truncates_and_masks_consistently(tiny):
    tokenizer, policy, _ = tiny
    ids, mask = pr.tokenize_prompts(["\n\nHuman: hello\n\nAssistant:", "hi"], tokenizer, 64)
    torch.manual_seed(1)
    # a frequent one-character token doubles as a stop token so that some responses stop early
    stop = (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("e"))
    generation = pr.generate_responses(policy, ids, mask, _sampling(tokenizer, stop_ids=stop, max_new_tokens=12))
    assert torch.equal(generation.query_responses[:, : ids.shape[1]], ids)
    response = generation.query_responses[:, generation.prompt_len :]
    truncated = generation.truncated
    for row in range(2):
        length = int(truncated.lengths[row])
        assert truncated.response_mask[row].sum() == length
        assert (response[row, length:] == tokenizer.pad_token_id).all()
        real = response[row, :length].tolist()
        if truncated.has_stop[row]:
            assert real[-1] in stop and not any(token in stop for token in real[:-1])
        else:
            assert not any(token in stop for token in real)
    assert torch.equal(generation.attention_mask[:, generation.prompt_len :], truncated.response_mask.long())


def test_forward_logprobs_match_what_generate_sampled_from_under_left_padding(tiny):
    tokenizer, policy, _ = tiny
    ids, mask = pr.tokenize_prompts(["\n\nHuman: a longer question here\n\nAssistant:", "hi"], tokenizer, 64)
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
        logprobs, entropy = pr.policy_logprobs(
            policy, sequences, full_mask, ids.shape[1], temperature, return_entropy=True
        )
    assert torch.allclose(logprobs, expected, atol=1e-4)
    assert entropy.shape == logprobs.shape and (entropy > 0).all()


def test_reward_is_read_at_the_last_real_token(tiny):
    tokenizer, _, scorer = tiny
    reward_model = pr.TokenScoreModel(scorer)
    eos = tokenizer.eos_token_id
    texts = ["\n\nHuman: hello\n\nAssistant:", "hi"]
    ids, mask = pr.tokenize_prompts(texts, tokenizer, 64)
    responses = torch.tensor([[17, eos, 5, 5], [17, 18, 19, 20]])  # stop in the middle / no stop
    from rlhfctl.stages.ppo_math import truncate_after_stop

    truncated = truncate_after_stop(responses, [eos], tokenizer.pad_token_id)
    generation = pr.Generation(
        torch.cat([ids, truncated.response_ids], 1), torch.cat([mask, truncated.response_mask.long()], 1),
        ids.shape[1], truncated,
    )
    raw, processed = pr.score_sequences(reward_model, generation, pr.ScoreSettings(missing_eos_penalty=1.0))
    # reference: the classification model's own output on each unpadded sequence
    for row, text in enumerate(texts):
        real = tokenizer(text)["input_ids"] + truncated.response_ids[row, : int(truncated.lengths[row])].tolist()
        with torch.no_grad():
            own = scorer(input_ids=torch.tensor([real])).logits[0, 0]
        assert raw[row].item() == pytest.approx(own.item(), abs=1e-4)
    assert processed.tolist() == pytest.approx([raw[0].item(), raw[1].item() - 1.0])


def test_collect_rollout_shapes_and_zeroed_padding(tiny):
    tokenizer, policy, scorer = tiny
    value_model = pr.TokenScoreModel(scorer)
    ids, mask = pr.tokenize_prompts(["\n\nHuman: hello\n\nAssistant:", "hi", "ok"], tokenizer, 64)
    torch.manual_seed(3)
    generation = pr.generate_responses(policy, ids, mask, _sampling(tokenizer))
    raw, scores = pr.score_sequences(value_model, generation, pr.ScoreSettings())
    rollout = pr.collect_rollout(
        generation, raw, scores, policy=policy, reference=policy, value_model=value_model, temperature=0.7,
        chunk_size=2,
    )
    response_len = generation.query_responses.shape[1] - generation.prompt_len
    for tensor in (rollout.old_logprobs, rollout.ref_logprobs, rollout.old_values):
        assert tensor.shape == (3, response_len)
        assert (tensor[rollout.response_mask == 0] == 0).all()
    assert torch.allclose(rollout.old_logprobs, rollout.ref_logprobs)  # same model: k1 = 0
    assert (rollout.old_logprobs[rollout.response_mask == 1] < 0).all()


def test_score_model_refuses_a_model_without_score_head():
    class NoHead(torch.nn.Module):
        base_model_prefix = "backbone"

    with pytest.raises(UserError, match="score head"):
        pr.TokenScoreModel(NoHead())
