"""Model-library fixtures: small random sequence-classification and causal models of the architectures rlhfctl
special-cases, the tiny kit model as policy + scorer, and sampling settings for generation."""

from __future__ import annotations

import pytest

PAD = 0


@pytest.fixture
def tiny_classifier():
    """``tiny_classifier(kind, **config_overrides)``: a 3-layer fp64 GPT-2 / Llama (GQA) / Qwen2 scalar-head model."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    def build(kind: str, **overrides):
        torch.manual_seed(0)
        common = {"vocab_size": 50, "num_labels": 1, "pad_token_id": PAD, "bos_token_id": 1, "eos_token_id": 2}
        if kind == "gpt2":
            config = transformers.GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=64, resid_pdrop=0.0,
                                             embd_pdrop=0.0, attn_pdrop=0.0, **common, **overrides)
        else:  # grouped-query attention: 4 query heads share 2 key/value heads
            config_class = transformers.LlamaConfig if kind == "llama" else transformers.Qwen2Config
            config = config_class(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=64, **common, **overrides)
        return transformers.AutoModelForSequenceClassification.from_config(config).double()

    return build


@pytest.fixture
def tiny_causal_lm():
    """``tiny_causal_lm(kind, **config_overrides)``: a 3-layer fp64 GPT-2 / Llama (GQA) / Qwen2 causal LM."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    def build(kind: str, **overrides):
        torch.manual_seed(0)
        common = {"vocab_size": 50, "pad_token_id": PAD, "bos_token_id": 1, "eos_token_id": 2}
        if kind == "gpt2":
            config = transformers.GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=64, resid_pdrop=0.0,
                                             embd_pdrop=0.0, attn_pdrop=0.0, **common, **overrides)
        else:  # grouped-query attention: 4 query heads share 2 key/value heads
            config_class = transformers.LlamaConfig if kind == "llama" else transformers.Qwen2Config
            config = config_class(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
                                  **common, **overrides)
        return transformers.AutoModelForCausalLM.from_config(config).double()

    return build


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """``(tokenizer, policy, scorer)`` of the tiny kit model, loaded with transformers directly."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    scorer = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    return tokenizer, policy, scorer


@pytest.fixture
def sampling():
    """``sampling(tokenizer, **overrides)``: ``SamplingSettings`` for short sampled responses."""
    from rlhfctl.models.generation import SamplingSettings

    def build(tokenizer, **overrides):
        settings = dict(
            max_new_tokens=6, temperature=0.7, top_k=0, top_p=1.0, do_sample=True,
            stop_ids=(tokenizer.eos_token_id,), pad_token_id=tokenizer.pad_token_id,
        )
        settings.update(overrides)
        return SamplingSettings(**settings)

    return build
