"""Model shapes from config.json alone: parameter counts against ``sum(p.numel())`` of tiny random transformers
models and peft's adapter counts, defaults, the Hugging Face cache, what is refused."""

from __future__ import annotations

import copy
import json

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

from rlhfctl.training.model_config import find_config_json, read_model_shape, shape_from_config
from rlhfctl.training.model_shape import READ_SHORTCUT_MODEL_TYPES, ModelShapeError

BASE = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
            max_position_embeddings=128)


def _configs():
    import transformers as t

    return {
        "gpt2": t.GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=128),
        "gpt2-n_inner-untied": t.GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                            n_inner=100, tie_word_embeddings=False),
        "llama-gqa": t.LlamaConfig(**BASE, num_key_value_heads=2),
        "llama-biases-tied": t.LlamaConfig(**BASE, attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
        "mistral": t.MistralConfig(**BASE, num_key_value_heads=2),
        "qwen2": t.Qwen2Config(**BASE, num_key_value_heads=2),
        "qwen3-head_dim": t.Qwen3Config(**BASE, num_key_value_heads=2, head_dim=24),
        "gemma2": t.Gemma2Config(**BASE, num_key_value_heads=2, head_dim=16),
        "gemma3_text": t.Gemma3TextConfig(**BASE, num_key_value_heads=2, head_dim=16),
        "phi3": t.Phi3Config(**BASE, num_key_value_heads=2, pad_token_id=0),
        "gpt_neox": t.GPTNeoXConfig(**BASE),
        "gpt_neox-no-bias-tied": t.GPTNeoXConfig(**BASE, attention_bias=False, tie_word_embeddings=True),
        "opt-projection": t.OPTConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      ffn_dim=96, word_embed_proj_dim=32, max_position_embeddings=100),
        "opt-no-bias": t.OPTConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   ffn_dim=96, max_position_embeddings=100, enable_bias=False),
    }


CASES = list(_configs())


def _numel(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())  # tied parameters counted once


def _classifier_config(config):
    config = copy.deepcopy(config)
    config.num_labels = 1
    return config


@pytest.mark.parametrize("name", CASES)
def test_parameter_counts_match_transformers(name):
    import transformers

    config = _configs()[name]
    shape = shape_from_config(config.to_dict())
    assert not shape.approximate
    assert shape.causal_lm_parameters() == _numel(transformers.AutoModelForCausalLM.from_config(config))
    classifier = transformers.AutoModelForSequenceClassification.from_config(_classifier_config(config))
    assert shape.classifier_parameters(1) == _numel(classifier)


@pytest.mark.parametrize("name", CASES)
def test_all_linear_lora_adapters_match_peft(name):
    import transformers
    from peft import LoraConfig, get_peft_model

    config = _configs()[name]
    shape = shape_from_config(config.to_dict())
    model = get_peft_model(transformers.AutoModelForCausalLM.from_config(config),
                           LoraConfig(r=4, target_modules="all-linear", fan_in_fan_out=name.startswith("gpt2")))
    trainable, _ = model.get_nb_trainable_parameters()
    assert shape.lora_parameters(4, "all-linear") == trainable


@pytest.mark.parametrize(("name", "targets"), [("llama-gqa", ("q_proj", "v_proj")), ("gpt2", ("c_attn",)),
                                               ("phi3", ("qkv_proj", "down_proj")), ("opt-projection", ("fc1",)),
                                               ("gpt2", ("attn.c_proj",))])
def test_listed_lora_targets_match_peft(name, targets):
    import transformers
    from peft import LoraConfig, get_peft_model

    config = _configs()[name]
    shape = shape_from_config(config.to_dict())
    model = get_peft_model(transformers.AutoModelForCausalLM.from_config(config),
                           LoraConfig(r=8, target_modules=list(targets), fan_in_fan_out=name.startswith("gpt2")))
    assert shape.lora_parameters(8, targets) == model.get_nb_trainable_parameters()[0]
    assert shape.unmatched_targets(targets) == []


def test_an_unknown_architecture_with_llama_keys_is_counted_approximately():
    shape = shape_from_config({"model_type": "my_decoder", **BASE})
    assert shape.approximate and shape.model_type == "my_decoder"
    assert shape.causal_lm_parameters() == shape_from_config({"model_type": "llama", **BASE}).causal_lm_parameters()


def test_unsupported_configs_say_why():
    with pytest.raises(ModelShapeError, match="model_type 't5' is not an architecture"):
        shape_from_config({"model_type": "t5", "d_model": 512})
    with pytest.raises(ModelShapeError, match="multimodal gemma3"):
        shape_from_config({"model_type": "gemma3", "text_config": {"hidden_size": 64}})
    with pytest.raises(ModelShapeError, match="unexpected values in the llama config"):
        shape_from_config({"model_type": "llama", "hidden_size": "wide"})


def test_defaults_fill_keys_a_config_leaves_out():
    import transformers

    shape = shape_from_config({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 1000})
    assert shape.max_positions == transformers.GPT2Config().n_positions and shape.tied_embeddings


def test_reads_a_local_folder_and_the_hugging_face_cache(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **BASE}), encoding="utf-8")
    assert read_model_shape(folder).hidden_size == 64

    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "qwen2", **BASE}), encoding="utf-8")
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("abc123", encoding="utf-8")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert find_config_json("org/tiny") == snapshot / "config.json"
    assert read_model_shape("org/tiny").model_type == "qwen2"
    with pytest.raises(ModelShapeError, match="not in the Hugging Face cache"):
        read_model_shape("org/absent")
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelShapeError, match="cannot read"):
        read_model_shape(folder)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "qwen2", "mistral", "gpt_neox", "opt-projection"])
def test_the_read_shortcut_list_matches_models_last_position(name):
    import transformers

    from rlhfctl.models.last_position import final_block, has_read_shortcut

    config = _configs()[name]
    model = transformers.AutoModelForSequenceClassification.from_config(_classifier_config(config))
    supported = has_read_shortcut(final_block(model.base_model))
    assert supported == (config.model_type in READ_SHORTCUT_MODEL_TYPES)
