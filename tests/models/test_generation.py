"""Generation on the tiny model: left padding, stop tokens, truncation after the first stop."""

from __future__ import annotations

import pytest
import torch

from rlhfctl.errors import UserError
from rlhfctl.models import generation as pr


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


def test_generation_truncates_and_masks_consistently(tiny, sampling):
    tokenizer, policy, _ = tiny
    ids, mask = pr.tokenize_prompts(["\n\nHuman: hello\n\nAssistant:", "hi"], tokenizer, 64)
    torch.manual_seed(1)
    # a frequent one-character token doubles as a stop token so that some responses stop early
    stop = (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("e"))
    generation = pr.generate_responses(policy, ids, mask, sampling(tokenizer, stop_ids=stop, max_new_tokens=12))
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


def test_generate_for_prompts_tokenizes_and_samples_as_the_two_steps_do(tiny, sampling):
    tokenizer, policy, _ = tiny
    texts = ["\n\nHuman: hello\n\nAssistant:", "hi"]
    settings = sampling(tokenizer, max_new_tokens=8)
    torch.manual_seed(3)
    together = pr.generate_for_prompts(policy, texts, tokenizer, 5, settings)
    ids, mask = pr.tokenize_prompts(texts, tokenizer, 5)  # no chat template: special tokens added
    torch.manual_seed(3)
    apart = pr.generate_responses(policy, ids, mask, settings)
    assert together.prompt_len == 5 and torch.equal(together.query_responses, apart.query_responses)
    assert torch.equal(together.attention_mask, apart.attention_mask)


def test_repeats_sample_each_prompt_that_many_times_as_the_repeated_list_does(tiny, sampling):
    """Each prompt is encoded once for its copies: the same tokens for the same seed (the draws are made over the
    whole batch as before); the log-probs agree to float rounding (the prompt's logits come from a batch of 2
    prompts instead of 6 rows, which may round the last bit differently)."""
    tokenizer, policy, _ = tiny
    texts = ["\n\nHuman: hello\n\nAssistant:", "hi"]
    settings = sampling(tokenizer, max_new_tokens=8)
    for engine in ("auto", "model"):
        torch.manual_seed(5)
        ids, mask = pr.tokenize_prompts(texts, tokenizer, 5)
        repeated = pr.generate_responses(policy, ids, mask, settings, engine=engine, repeats=3)
        torch.manual_seed(5)
        listed = pr.generate_for_prompts(policy, [text for text in texts for _ in range(3)], tokenizer, 5, settings)
        assert repeated.query_responses.shape[0] == 6
        assert torch.equal(repeated.query_responses, listed.query_responses), engine
        assert torch.equal(repeated.attention_mask, listed.attention_mask)
        assert torch.allclose(repeated.response_logprobs, listed.response_logprobs, atol=1e-5, rtol=0)
    torch.manual_seed(5)
    through_texts = pr.generate_for_prompts(policy, texts, tokenizer, 5, settings, repeats=3)
    assert torch.equal(through_texts.query_responses, listed.query_responses)
