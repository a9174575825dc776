"""rlhfctl's decoder samples what transformers' ``generate`` samples: the same tokens for the same seed (sampling,
top-k / top-p, greedy), the same per-step logits, through the GPT-2 fast path and the generic one."""

from __future__ import annotations

import pytest
import torch

from rlhfctl.models.decoding import Gpt2Decoder, make_decoder, sample_from
from rlhfctl.models.generation import SamplingSettings, generate_responses, tokenize_prompts

PROMPTS = ["\n\nHuman: a longer question about potatoes here\n\nAssistant:", "hi", "\n\nHuman: ok?\n\nAssistant:"]


@pytest.fixture(scope="module")
def llama():
    """A random 2-layer Llama (grouped-query attention) causal LM: the generic decoder's case."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def _frequent_tokens(generation, pad_token_id: int, count: int) -> tuple[int, ...]:
    """Tokens the model emits often: used as extra stop tokens so rows stop at different steps."""
    ranked = torch.bincount(generation.truncated.response_ids.flatten()).argsort(descending=True).tolist()
    return tuple(token for token in ranked if token != pad_token_id)[:count]


def _settings(pad: int, stops: tuple[int, ...], **overrides) -> SamplingSettings:
    settings = dict(max_new_tokens=24, temperature=0.7, top_k=0, top_p=1.0, do_sample=True, stop_ids=stops,
                    pad_token_id=pad)
    settings.update(overrides)
    return SamplingSettings(**settings)


def _same_as_generate(model, ids, mask, settings, seeds=range(4), engines=("auto", "model")):
    for seed in seeds:
        torch.manual_seed(seed)
        reference = generate_responses(model, ids, mask, settings, engine="generate")
        for engine in engines:
            torch.manual_seed(seed)
            ours = generate_responses(model, ids, mask, settings, engine=engine)
            assert torch.equal(ours.query_responses, reference.query_responses), (engine, seed)
            assert torch.equal(ours.truncated.response_mask, reference.truncated.response_mask)


@pytest.mark.parametrize("overrides", [{}, {"top_k": 20}, {"top_p": 0.8, "temperature": 1.3}, {"do_sample": False}])
def test_gpt2_tokens_equal_generates_for_the_same_seed(tiny, overrides):
    tokenizer, policy, _ = tiny
    ids, mask = tokenize_prompts(PROMPTS, tokenizer, 64)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    assert Gpt2Decoder.supports(policy)
    torch.manual_seed(0)
    probe = generate_responses(policy, ids, mask, _settings(pad, (eos,)), engine="generate")
    stops = (eos, *_frequent_tokens(probe, pad, 6))  # rows stop at different steps: finished rows leave the batch
    _same_as_generate(policy, ids, mask, _settings(pad, stops, **overrides))


def test_generic_decoder_tokens_equal_generates_for_another_architecture(llama):
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12], [0, 0, 0, 0, 13]])
    mask = (ids != 0).long()
    assert not Gpt2Decoder.supports(llama) and type(make_decoder(llama, mask, 4)).__name__ == "ModelDecoder"
    torch.manual_seed(0)
    probe = generate_responses(llama, ids, mask, _settings(0, (2,)), engine="generate")
    _same_as_generate(llama, ids, mask, _settings(0, (2, *_frequent_tokens(probe, 0, 8))), engines=("auto",))


def test_logprobs_are_those_of_the_logits_each_token_was_sampled_from(tiny):
    tokenizer, policy, _ = tiny
    ids, mask = tokenize_prompts(PROMPTS, tokenizer, 64)
    settings = _settings(tokenizer.pad_token_id, (tokenizer.eos_token_id,), max_new_tokens=6)
    torch.manual_seed(5)
    out = policy.generate(input_ids=ids, attention_mask=mask, generation_config=settings.to_generation_config(),
                          output_logits=True, return_dict_in_generate=True)
    steps = torch.stack(out.logits, dim=1)  # (batch, 6, vocab): generate's raw logits at each step
    expected = torch.log_softmax(steps / settings.temperature, -1)
    expected = expected.gather(2, out.sequences[:, ids.shape[1]:, None]).squeeze(-1)
    torch.manual_seed(5)
    ours = generate_responses(policy, ids, mask, settings)
    assert torch.equal(ours.query_responses, out.sequences)
    assert ours.logprobs_temperature == settings.temperature
    assert torch.allclose(ours.response_logprobs, expected * ours.truncated.response_mask, atol=1e-5)


def test_sample_from_is_multinomials_draw():
    probs = torch.softmax(torch.randn(16, 50) * 3, dim=-1)
    probs[:, :10] = 0.0  # impossible tokens are never drawn
    for seed in range(20):
        torch.manual_seed(seed)
        expected = torch.multinomial(probs, 1).squeeze(1)
        torch.manual_seed(seed)
        assert torch.equal(sample_from(probs), expected)
    assert (sample_from(probs) >= 10).all()


def test_gpt2_fast_path_is_skipped_where_it_would_differ(tiny_classifier):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, reorder_and_upcast_attn=True)
    assert not Gpt2Decoder.supports(transformers.GPT2LMHeadModel(config))
    with pytest.raises(ValueError, match="engine"):
        make_decoder(transformers.GPT2LMHeadModel(config), torch.ones(1, 2), 2, engine="fast")


@pytest.mark.parametrize("engine", ["auto", "model"])
def test_shared_prompt_decoding_samples_the_tokens_of_separate_copies(tiny, llama, engine):
    """``repeats``: a prompt encoded once for its copies gives, for the same seed, the tokens that decoding every
    copy gives (rows stopping at different steps, so stopped rows are dropped mid-way too), on the GPT-2 fast path
    and the generic decoder (Llama)."""
    from rlhfctl.models.decoding import decode

    for model, pad, prompt_ids, prompt_mask in _shared_prompt_cases(tiny, llama):
        probe = generate_responses(model, prompt_ids, prompt_mask, _settings(pad, (pad,)), engine="generate")
        stops = _frequent_tokens(probe, pad, 6)
        kwargs = dict(max_new_tokens=24, do_sample=True, temperature=0.7, top_k=0, top_p=1.0, stop_ids=stops,
                      pad_token_id=pad, engine=engine)
        for seed in range(3):
            torch.manual_seed(seed)
            shared = decode(model, prompt_ids, prompt_mask, repeats=4, **kwargs)
            torch.manual_seed(seed)
            separate = decode(model, prompt_ids.repeat_interleave(4, 0), prompt_mask.repeat_interleave(4, 0), **kwargs)
            assert torch.equal(shared.tokens, separate.tokens), seed
            assert torch.allclose(shared.logprobs, separate.logprobs, atol=1e-5, rtol=0)
            assert len(set(map(tuple, shared.tokens.tolist()))) > 1  # the copies are sampled, not copied


def _shared_prompt_cases(tiny, llama):
    tokenizer, policy = tiny[0], tiny[1].eval()
    ids, mask = tokenize_prompts(PROMPTS, tokenizer, 16)
    yield policy, tokenizer.pad_token_id, ids, mask
    llama_ids = torch.tensor([[0, 0, 5, 9, 11], [3, 4, 5, 6, 7]])
    yield llama, 0, llama_ids, (llama_ids != 0).long()
