"""ModelShape's arithmetic: parameter sums, LoRA adapters on the linears peft would wrap, target matching."""

from __future__ import annotations

import pytest

from rlhfctl.training.model_config import shape_from_config
from rlhfctl.training.model_shape import Linear, ModelShapeError

BASE = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
            max_position_embeddings=128)


def test_a_target_matches_a_module_name_or_its_dotted_end():
    linear = Linear("self_attn.q_proj", 64, 64, False)
    assert linear.matches("q_proj") and linear.matches("self_attn.q_proj")
    assert not linear.matches("proj") and not linear.matches("attn.q_proj")
    assert Linear("mlp.c_fc", 64, 256, True).parameters == 64 * 256 + 256


def test_hand_computed_llama_and_gpt2_counts():
    # Llama: embed 1000x64, per block q/o 64x64, k/v 64x32 (2 of 4 heads), gate/up/down 64x96, two norms; final
    # norm; untied head 1000x64.
    llama = shape_from_config({"model_type": "llama", **BASE, "num_key_value_heads": 2})
    block = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 96 + 2 * 64
    assert llama.block_parameters == block
    assert llama.causal_lm_parameters() == 1000 * 64 + 2 * block + 64 + 1000 * 64
    assert llama.classifier_parameters() == 1000 * 64 + 2 * block + 64 + 64
    assert llama.lora_parameters(8, ("q_proj",)) == 2 * 8 * (64 + 64)
    # GPT-2: wte + wpe, c_attn 64->192, c_proj 64->64, c_fc 64->256, c_proj 256->64 with biases, ln_1/ln_2, ln_f.
    gpt2 = shape_from_config({"model_type": "gpt2", "vocab_size": 1000, "n_embd": 64, "n_layer": 2, "n_head": 4,
                              "n_positions": 128})
    block = (64 * 192 + 192) + (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64) + 4 * 64
    assert gpt2.causal_lm_parameters() == (1000 + 128) * 64 + 2 * block + 2 * 64


def test_unknown_targets_are_reported():
    shape = shape_from_config({"model_type": "llama", **BASE})
    assert shape.unmatched_targets(("q_proj", "c_attn", "proj")) == ["c_attn", "proj"]
    with pytest.raises(ModelShapeError, match="all-linear"):
        shape.lora_parameters(8, "every-linear")
