"""rlhfctl's decoder samples what transformers' ``generate`` samples: with ``generate``'s own draw put in, the same
tokens for the same seed (sampling, top-k / top-p, greedy) and the same per-step logits, through the GPT-2 fast path
and the generic one; and its own draw (:func:`sample_from`, inverse CDF) draws from the same distribution."""

from __future__ import annotations

import pytest
import torch

from rlhfctl.models import decoding
from rlhfctl.models.decoding import SAMPLE_BLOCK, Gpt2Decoder, make_decoder, sample_from
from rlhfctl.models.generation import SamplingSettings, generate_responses, tokenize_prompts

@pytest.fixture
def generates_draw(monkeypatch):
    """The decoder draws as ``generate`` does, so a seed gives ``generate``'s tokens: checks everything but the draw."""
    monkeypatch.setattr(decoding, "sample_from", decoding.multinomial_draw)


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
def test_gpt2_tokens_equal_generates_for_the_same_seed(tiny, overrides, generates_draw):
    tokenizer, policy, _ = tiny
    ids, mask = tokenize_prompts(PROMPTS, tokenizer, 64)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    assert Gpt2Decoder.supports(policy)
    torch.manual_seed(0)
    probe = generate_responses(policy, ids, mask, _settings(pad, (eos,)), engine="generate")
    stops = (eos, *_frequent_tokens(probe, pad, 6))  # rows stop at different steps: finished rows leave the batch
    _same_as_generate(policy, ids, mask, _settings(pad, stops, **overrides))


def test_generic_decoder_tokens_equal_generates_for_another_architecture(llama, generates_draw):
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12], [0, 0, 0, 0, 13]])
    mask = (ids != 0).long()
    assert not Gpt2Decoder.supports(llama) and type(make_decoder(llama, mask, 4)).__name__ == "ModelDecoder"
    torch.manual_seed(0)
    probe = generate_responses(llama, ids, mask, _settings(0, (2,)), engine="generate")
    _same_as_generate(llama, ids, mask, _settings(0, (2, *_frequent_tokens(probe, 0, 8))), engines=("auto",))


def test_logprobs_are_those_of_the_logits_each_token_was_sampled_from(tiny, generates_draw):
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


def test_multinomial_draw_is_multinomials_draw():
    probs = torch.softmax(torch.randn(16, 50) * 3, dim=-1)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = torch.multinomial(probs, 1).squeeze(1)
        torch.manual_seed(seed)
        assert torch.equal(decoding.multinomial_draw(probs), expected)


def _chi_square(probs: torch.Tensor, draws: int) -> tuple[float, int, torch.Tensor]:
    """``draws`` draws from the one distribution ``probs`` ``(vocab,)``: Pearson's statistic over the tokens of
    positive probability, its degrees of freedom, and the counts of every token."""
    rows = probs.expand(4096, -1).contiguous()
    counts = torch.zeros(probs.shape[0])
    for _ in range(draws // 4096):
        counts += torch.bincount(sample_from(rows), minlength=probs.shape[0])
    expected = probs.double() / probs.double().sum() * counts.sum()
    positive = expected > 0
    statistic = ((counts[positive] - expected[positive]) ** 2 / expected[positive]).sum()
    return float(statistic), int(positive.sum()) - 1, counts


# vocabularies in one block, exactly two blocks, and blocks with a short last one
@pytest.mark.parametrize("vocab", [300, 2 * SAMPLE_BLOCK, 3 * SAMPLE_BLOCK + 77])
def test_sample_from_draws_the_distribution(vocab):
    generator = torch.Generator().manual_seed(vocab)
    probs = torch.softmax(torch.randn(vocab, generator=generator) * 2, dim=-1)
    probs[:40] = 0.0  # impossible tokens, at the start, inside, and at the end of the vocabulary
    probs[vocab // 2: vocab // 2 + 30] = 0.0
    probs[-25:] = 0.0
    probs[vocab // 3] = 0.2  # one likely token, so its count is checked to a tight relative precision
    probs[: SAMPLE_BLOCK // 2] *= 4.0  # blocks of unequal mass, so a skewed choice of block shows
    torch.manual_seed(0)
    statistic, freedom, counts = _chi_square(probs, 81920)
    # Pearson's statistic: mean = freedom, sd = sqrt(2 freedom); 5 sd over is far beyond chance for a fixed seed,
    # while a drawn token shifted by one or a lost block is hundreds of sd over
    assert statistic < freedom + 5 * (2 * freedom) ** 0.5, (statistic, freedom)
    # the same over whole blocks (few cells: a block choice skewed by a few per cent is far over)
    blocks = -(-vocab // SAMPLE_BLOCK)
    block_counts = torch.zeros(blocks).index_add_(0, torch.arange(vocab) // SAMPLE_BLOCK, counts)
    block_expected = torch.zeros(blocks, dtype=torch.float64).index_add_(
        0, torch.arange(vocab) // SAMPLE_BLOCK, probs.double() / probs.double().sum() * counts.sum())
    block_statistic = float(((block_counts - block_expected) ** 2 / block_expected).sum())
    assert block_statistic < (blocks - 1) + 5 * (2 * max(blocks - 1, 1)) ** 0.5, block_statistic
    assert counts[probs == 0].sum() == 0
    share = counts[vocab // 3] / counts.sum()
    assert abs(share - probs[vocab // 3] / probs.sum()) < 0.01


def test_sample_from_rows_are_drawn_from_their_own_distributions():
    vocab = 2 * SAMPLE_BLOCK + 5
    probs = torch.zeros(6, vocab)
    for row, token in enumerate([0, 1, SAMPLE_BLOCK - 1, SAMPLE_BLOCK, vocab - 2, vocab - 1]):
        probs[row, token] = 1.0
    probs[2, 7] = 1e-30  # a token that rounds away against the mass of its block
    small = torch.softmax(torch.randn(4, 10), dim=-1) * 3.0  # any positive total, not only 1
    small[:, 4] = 0.0
    for seed in range(50):
        torch.manual_seed(seed)
        assert sample_from(probs).tolist() == [0, 1, SAMPLE_BLOCK - 1, SAMPLE_BLOCK, vocab - 2, vocab - 1]
        assert (sample_from(small) != 4).all()


@pytest.mark.parametrize("vocab", [50, 3 * SAMPLE_BLOCK + 7])
def test_sample_from_gives_a_token_id_for_rows_that_are_not_distributions(vocab):
    """NaN (a diverged model's logits) or all zeros: an id inside the vocabulary, not an index error mid-rollout
    (the non-finite loss check reports the divergence)."""
    probs = torch.full((2, vocab), float("nan"))
    probs[1] = 0.0
    tokens = sample_from(probs)
    assert ((tokens >= 0) & (tokens < vocab)).all()


def test_sample_from_draws_from_the_default_generator():
    probs = torch.softmax(torch.randn(8, 3 * SAMPLE_BLOCK), dim=-1)
    torch.manual_seed(3)
    first = sample_from(probs)
    torch.manual_seed(3)
    assert torch.equal(sample_from(probs), first)
    assert sample_from(probs.to(torch.bfloat16)).dtype == torch.int64


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
