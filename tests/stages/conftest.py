"""Stage-test fixtures: small random sequence-classification models of the architectures rlhfctl special-cases."""

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
