"""Activation memory against measurement: the bytes autograd keeps for the backward, counted with saved-tensor
hooks on tiny random models of every architecture; and the arithmetic of the transient terms."""

from __future__ import annotations

import pytest

from rlhfctl.training.activation_memory import (
    CPU_HEAP_RETENTION,
    MMAP_THRESHOLD_BYTES,
    PassSettings,
    block_elements_per_token,
    generation,
    head_temporaries,
    kept_activations,
    no_grad_forward,
    resident,
    transient_gradients,
)
from rlhfctl.training.model_config import shape_from_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

ROWS, LENGTH = 2, 64
BASE = dict(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=352,
            max_position_embeddings=256)
ON_DEVICE = PassSettings(device="cuda")  # no allocator retention: compare tensor bytes with tensor bytes


def _config(name):
    import transformers as t

    return {
        "gpt2": lambda: t.GPT2Config(vocab_size=512, n_embd=128, n_layer=2, n_head=4, n_positions=256),
        "llama": lambda: t.LlamaConfig(**BASE, num_key_value_heads=2),
        "mistral": lambda: t.MistralConfig(**BASE, num_key_value_heads=2),
        "qwen2": lambda: t.Qwen2Config(**BASE, num_key_value_heads=2),
        "qwen3": lambda: t.Qwen3Config(**BASE, num_key_value_heads=2, head_dim=64),
        "gemma2": lambda: t.Gemma2Config(**BASE, num_key_value_heads=2, head_dim=48),
        "gemma3_text": lambda: t.Gemma3TextConfig(**BASE, num_key_value_heads=2, head_dim=48),
        "phi3": lambda: t.Phi3Config(**BASE, num_key_value_heads=2, pad_token_id=0),
        "gpt_neox": lambda: t.GPTNeoXConfig(**BASE),
        "opt": lambda: t.OPTConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   ffn_dim=352, max_position_embeddings=256),
    }[name]()


def _model(name, *, dropout: bool = False):
    import torch
    import transformers

    from rlhfctl.models.loading import disable_dropout, use_fused_activations

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_config(name)).train()
    use_fused_activations(model)  # as rlhfctl's loader does
    if not dropout:
        disable_dropout(model)
    return model


def _saved_bytes(model) -> int:
    """Bytes of the distinct non-parameter storages autograd saves in one forward over a padded batch."""
    import torch

    torch.manual_seed(1)
    ids = torch.randint(0, 500, (ROWS, LENGTH))
    mask = torch.ones(ROWS, LENGTH, dtype=torch.long)
    mask[0, :5] = 0  # a padded row: the attention mask is materialised, as in every training batch
    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    return sum(seen.values())


ARCHITECTURES = ["gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt_neox", "opt"]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_kept_activations_match_what_autograd_saves(name):
    model = _model(name)
    shape = shape_from_config(model.config.to_dict())
    estimate = kept_activations(shape, ROWS, LENGTH, ON_DEVICE)
    assert estimate == pytest.approx(_saved_bytes(model), rel=0.10)


@pytest.mark.parametrize("name", ["gpt2", "opt"])
def test_dropout_kept_by_sft_is_counted(name):
    model = _model(name, dropout=True)
    shape = shape_from_config(model.config.to_dict())
    estimate = kept_activations(shape, ROWS, LENGTH, PassSettings(device="cuda", keeps_dropout=True))
    assert estimate == pytest.approx(_saved_bytes(model), rel=0.10)


@pytest.mark.parametrize("name", ["llama", "gpt2", "phi3", "gpt_neox"])
def test_lora_on_a_frozen_base_keeps_what_is_measured(name):
    from peft import LoraConfig, get_peft_model

    model = _model(name)
    shape = shape_from_config(model.config.to_dict())
    get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", fan_in_fan_out=name == "gpt2"))
    settings = PassSettings(device="cuda", frozen_base=True, lora_r=8,
                            lora_linears_per_block=len(shape.block_linears))
    assert kept_activations(shape, ROWS, LENGTH, settings) == pytest.approx(_saved_bytes(model), rel=0.10)


@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen3"])
def test_gradient_checkpointing_keeps_block_inputs_and_recomputes_one_block(name):
    model = _model(name)
    shape = shape_from_config(model.config.to_dict())
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    settings = PassSettings(device="cuda", gradient_checkpointing=True)
    one_block = ROWS * LENGTH * block_elements_per_token(shape, LENGTH) * 4
    forward_only = kept_activations(shape, ROWS, LENGTH, settings) - one_block  # the recompute is in the backward
    assert forward_only == pytest.approx(_saved_bytes(model), rel=0.15)
    assert kept_activations(shape, ROWS, LENGTH, settings) < 0.75 * kept_activations(shape, ROWS, LENGTH, ON_DEVICE)


# ----------------------------------------------------------------------------------------------- arithmetic


LLAMA = shape_from_config({"model_type": "llama", "vocab_size": 32000, "hidden_size": 512, "num_hidden_layers": 8,
                           "num_attention_heads": 8, "intermediate_size": 1536})


def test_heap_sized_blocks_cost_more_on_cpu_only():
    small, large = MMAP_THRESHOLD_BYTES - 1, MMAP_THRESHOLD_BYTES
    assert resident(1000, small, PassSettings(device="cpu")) == int(1000 * (1 + CPU_HEAP_RETENTION))
    assert resident(1000, large, PassSettings(device="cpu")) == 1000
    assert resident(1000, small, PassSettings(device="cuda")) == 1000


def test_a_fixed_mmap_threshold_leaves_only_smaller_blocks_on_the_heap():
    settings = PassSettings(device="cpu", mmap_threshold_bytes=128 * 1024)  # rlhfctl's allocator policy
    assert resident(1000, 128 * 1024, settings) == 1000
    assert resident(1000, 128 * 1024 - 1, settings) == int(1000 * (1 + CPU_HEAP_RETENTION))
    dynamic = PassSettings(device="cpu")
    assert kept_activations(LLAMA, 4, 256, settings) < kept_activations(LLAMA, 4, 256, dynamic)


def test_block_elements_follow_the_measured_coefficients():
    # Llama: 6 x hidden + 4 x heads*head_dim + 4 x intermediate + the mask (length) + one log-sum-exp per head
    assert block_elements_per_token(LLAMA, 256) == 6 * 512 + 4 * 512 + 4 * 1536 + 256 + 8
    frozen = PassSettings(frozen_base=True, lora_r=8, lora_linears_per_block=7)
    assert block_elements_per_token(LLAMA, 256, frozen) == 4 * 512 + 4 * 512 + 4 * 1536 + 256 + 8 + 8 * 7


def test_sft_head_holds_four_full_vocabulary_copies_in_its_backward():
    rows, length = 8, 256
    fp32_logits = rows * length * 32000 * 4
    working = rows * length * (2 * 512 + 2 * 1536) * 4
    assert head_temporaries(LLAMA, rows, length, "token_nll", ON_DEVICE) == 4 * fp32_logits + working
    # PPO: the logits once plus four response-sized copies (scaled logits, entropy's softmax and product)
    response = rows * 64 * 32000 * 4
    assert head_temporaries(LLAMA, rows, length, "logprobs", ON_DEVICE, response_length=64) == (
        fp32_logits + 4 * response + working)
    assert head_temporaries(LLAMA, rows, length, "score", ON_DEVICE) == working


def test_no_grad_log_probs_hold_the_logits_and_two_response_copies():
    rows, length = 4, 256
    logits = rows * length * 32000 * 4
    response = rows * 64 * 32000 * 4
    assert no_grad_forward(LLAMA, rows, length, "logprobs", ON_DEVICE, response_length=64) == logits + 2 * response


def test_the_kv_cache_holds_keys_and_values_of_every_block():
    cache, _ = generation(LLAMA, rows=8, prompt_length=192, new_tokens=64, settings=ON_DEVICE)
    assert cache == 2 * 8 * 8 * 256 * 8 * 64 * 4  # (k, v) x layers x rows x tokens x kv heads x head_dim x fp32


def test_a_single_workers_gradients_split_into_mmapped_embeddings_and_heap_blocks():
    trainable = LLAMA.causal_lm_parameters()
    large = (LLAMA.embedding_parameters + LLAMA.lm_head_parameters) * 4
    rest = trainable * 4 - large
    assert transient_gradients(LLAMA, trainable, True, PassSettings(), lm_head=True) == (
        large + int(rest * (1 + CPU_HEAP_RETENTION)))
    assert transient_gradients(LLAMA, 1000, False, ON_DEVICE, lm_head=True) == 4000
