"""generation.backend = "vllm" on the worker (models/vllm_engine.py), against a stand-in vllm module
(tests/models/fake_vllm.py): the sampling settings vLLM gets, prompts in and padded responses out, the engine built
once, the policy's weights synced on first use and after optimizer steps only (plain and LoRA-merged names), sleep
mode's order of calls."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from rlhfctl.errors import RuntimeFailure
from rlhfctl.models import vllm_engine
from rlhfctl.models.vllm_engine import (
    VLLMRollouts,
    engine_weight_name,
    prompt_token_lists,
    sampling_params_for,
    set_launcher_environment,
)
from tests.models import fake_vllm

PROMPTS = ["Question: what is two plus two?\nAnswer:", "Hi"]


@pytest.fixture
def llm_class(monkeypatch):
    """The stand-in vllm installed; the launcher environment (CUDA device, torchrun variables) recorded instead."""
    launched = []
    monkeypatch.setattr(vllm_engine, "set_launcher_environment", launched.append)
    llm_class = fake_vllm.install(monkeypatch)
    llm_class.launched = launched
    return llm_class


def _generation_section(**overrides):
    settings = dict(backend="vllm", vllm_gpu_memory_utilization=0.4, vllm_dtype="float32",
                    vllm_sleep_between_rollouts=False)
    settings.update(overrides)
    return SimpleNamespace(**settings)


def _policy(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()


def _lora_policy(tiny_model_dir):
    """The policy as rlhfctl adapts it for [lora]: peft's layers injected into the transformers model itself."""
    from rlhfctl.config.schema.lora import LoraConfig
    from rlhfctl.models.adapters import add_lora

    policy = _policy(tiny_model_dir)
    add_lora(policy, LoraConfig(r=4, alpha=8.0, target_modules=["c_attn"]), source="tiny")
    return policy


def _rollouts(policy, tokenizer, sampling, *, optimizer=None, merged=None, **generation) -> VLLMRollouts:
    return VLLMRollouts(policy=policy, tokenizer=tokenizer, sampling=sampling, generation=_generation_section(
        **generation), max_model_len=96, seed=7, merged=merged or (lambda model: contextlib.nullcontext()),
        optimizer=optimizer)


# ----------------------------------------------------------------------------------------------- sampling settings


def test_sampling_params_carry_the_builtin_decoders_distribution(llm_class, tiny, sampling):
    tokenizer = tiny[0]
    settings = sampling(tokenizer, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=12, stop_ids=(5, 9))
    assert sampling_params_for(settings, repeats=4).kwargs == {
        "n": 4, "temperature": 0.7, "top_k": 20, "top_p": 0.9, "max_tokens": 12, "stop_token_ids": [5, 9],
        # only the stop ids end a response (EOS too only when it is the stop id), as in the builtin decoder
        "ignore_eos": True, "detokenize": False, "skip_special_tokens": False}


def test_greedy_decoding_is_temperature_zero_without_truncation(llm_class, tiny, sampling):
    settings = sampling(tiny[0], do_sample=False, temperature=0.7, top_k=20, top_p=0.9)
    params = sampling_params_for(settings).kwargs
    assert (params["temperature"], params["top_k"], params["top_p"], params["n"]) == (0.0, 0, 1.0, 1)


# ----------------------------------------------------------------------------------------------- prompts and responses


def test_prompt_token_lists_drop_the_left_padding():
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert prompt_token_lists(ids, mask) == [[5, 6], [7, 8, 9, 10]]


def test_responses_come_back_cut_after_the_stop_token_padded_and_masked(llm_class, tiny, tiny_model_dir, sampling):
    from rlhfctl.models.generation import tokenize_rendered_prompts

    tokenizer = tiny[0]
    stop, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    settings = sampling(tokenizer, max_new_tokens=5)
    # prompt 0: completion 0 stops after two tokens (vLLM stops there; the tokens after it must not count),
    # completion 1 runs to the limit; prompt 1: completion 0 is one token then the stop, completion 1 empty + stop
    scripted = {(0, 0): [11, 12, stop, 13], (0, 1): [21, 22, 23, 24, 25], (1, 0): [31, stop], (1, 1): [stop]}
    llm_class.script = lambda ids, index: scripted[(0 if len(ids) > 3 else 1, index)]
    rollouts = _rollouts(_policy(tiny_model_dir), tokenizer, settings)

    generation = rollouts.generate(PROMPTS, max_prompt_tokens=40, repeats=2)

    prompt_ids, prompt_mask = tokenize_rendered_prompts(PROMPTS, tokenizer, 40)
    sent, params = llm_class.instances[0].requests[0]
    assert [request["prompt_token_ids"] for request in sent] == [
        tokenizer(text)["input_ids"] for text in PROMPTS]
    assert params.n == 2
    prompt_len = prompt_ids.shape[1]
    assert generation.prompt_len == prompt_len
    # each prompt's completions in consecutive rows, index order, after that prompt's left-padded ids
    assert torch.equal(generation.query_responses[:, :prompt_len], prompt_ids.repeat_interleave(2, 0))
    assert torch.equal(generation.attention_mask[:, :prompt_len], prompt_mask.repeat_interleave(2, 0))
    assert generation.truncated.response_ids.tolist() == [
        [11, 12, stop, pad, pad], [21, 22, 23, 24, 25], [31, stop, pad, pad, pad], [stop, pad, pad, pad, pad]]
    assert generation.truncated.response_mask.long().tolist() == [
        [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]
    assert torch.equal(generation.attention_mask[:, prompt_len:], generation.truncated.response_mask.long())
    assert generation.truncated.has_stop.tolist() == [True, False, True, True]
    assert generation.truncated.lengths.tolist() == [3, 5, 2, 1]
    # no log-probs from vLLM: PPO's and GRPO's old log-probs come from the policy's own forward
    assert generation.response_logprobs is None


def test_greedy_groups_send_each_prompt_once_per_completion(llm_class, tiny, tiny_model_dir, sampling):
    """vLLM refuses n > 1 at temperature 0: a greedy group is the prompt sent n times, in consecutive rows."""
    tokenizer = tiny[0]
    llm_class.script = lambda ids, index: [len(ids), tokenizer.eos_token_id]
    rollouts = _rollouts(_policy(tiny_model_dir), tokenizer, sampling(tokenizer, do_sample=False))
    generation = rollouts.generate(PROMPTS, 40, repeats=3)

    sent, params = llm_class.instances[0].requests[0]
    lengths = [len(tokenizer(text)["input_ids"]) for text in PROMPTS]
    assert [len(request["prompt_token_ids"]) for request in sent] == [lengths[0]] * 3 + [lengths[1]] * 3
    assert params.n == 1
    assert generation.truncated.response_ids[:, 0].tolist() == [lengths[0]] * 3 + [lengths[1]] * 3


# ----------------------------------------------------------------------------------------------- engine and weights


def test_the_engine_is_built_once_from_the_policys_config_with_dummy_weights(llm_class, tiny, tiny_model_dir,
                                                                            sampling):
    policy = _policy(tiny_model_dir)
    rollouts = _rollouts(policy, tiny[0], sampling(tiny[0]))
    assert llm_class.instances == []  # lazily: nothing before the first rollout
    rollouts.generate(PROMPTS, 40)
    rollouts.generate(PROMPTS, 40)

    (llm,) = llm_class.instances
    folder = llm.kwargs.pop("model")
    assert llm.kwargs == {
        "load_format": "dummy", "skip_tokenizer_init": True, "dtype": "float32", "gpu_memory_utilization": 0.4,
        "max_model_len": 96, "max_num_batched_tokens": 4096, "seed": 7, "enable_sleep_mode": False,
        "distributed_executor_backend": "external_launcher", "tensor_parallel_size": 1, "trust_remote_code": False}
    config = json.loads((Path(folder) / "config.json").read_text())
    assert config["vocab_size"] == policy.get_input_embeddings().num_embeddings
    assert config["architectures"] == [type(policy).__name__]
    assert llm_class.launched == [next(policy.parameters()).device]


def test_weights_are_synced_first_then_only_after_optimizer_steps(llm_class, tiny, tiny_model_dir, sampling):
    from rlhfctl.models.generation import generate_responses, tokenize_rendered_prompts

    tokenizer = tiny[0]
    policy = _policy(tiny_model_dir)
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    settings = sampling(tokenizer, do_sample=False, max_new_tokens=6)
    rollouts = _rollouts(policy, tokenizer, settings, optimizer=optimizer)

    def builtin_greedy():
        ids, mask = tokenize_rendered_prompts(PROMPTS, tokenizer, 40)
        return generate_responses(policy, ids, mask, settings).query_responses

    first = rollouts.generate(PROMPTS, 40)
    llm = llm_class.instances[0]
    engine = llm.engine_model
    names = [name for name, _ in policy.named_parameters()]
    assert engine.loaded == [names]  # every parameter, transformers' names
    assert llm.calls == ["apply_model", "reset_prefix_cache", "generate"]
    # the engine samples with the policy's weights, not its dummy ones: greedy tokens equal the builtin decoder's
    assert torch.equal(first.query_responses, builtin_greedy())

    rollouts.generate(PROMPTS, 40)  # nothing changed: no sync
    assert len(engine.loaded) == 1 and llm.calls[3:] == ["generate"]

    policy(**tokenizer(PROMPTS[0], return_tensors="pt"), labels=tokenizer(PROMPTS[0], return_tensors="pt")[
        "input_ids"]).loss.backward()
    optimizer.step()
    optimizer.step()  # two updates before the next rollout: one sync
    third = rollouts.generate(PROMPTS, 40)
    assert len(engine.loaded) == 2 and llm.calls[4:] == ["apply_model", "reset_prefix_cache", "generate"]
    for name, param in policy.named_parameters():
        assert torch.equal(dict(engine.model.named_parameters())[name], param.detach())
    assert torch.equal(third.query_responses, builtin_greedy())


def test_a_lora_policy_syncs_merged_weights_under_the_base_models_names(llm_class, tiny, tiny_model_dir, sampling):
    from rlhfctl.models.adapters import adapters_merged

    plain = _policy(tiny_model_dir)
    base_names = [name for name, _ in plain.named_parameters()]
    policy = _lora_policy(tiny_model_dir)
    assert any(".base_layer." in name for name, _ in policy.named_parameters())
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # peft starts B at zero: a visible delta
    layer = policy.transformer.h[0].attn.c_attn
    base_before = layer.base_layer.weight.detach().clone()
    expected = base_before + layer.get_delta_weight("default")

    rollouts = _rollouts(policy, tiny[0], sampling(tiny[0]), merged=adapters_merged)
    rollouts.generate(PROMPTS, 40)

    engine = llm_class.instances[0].engine_model
    (loaded,) = engine.loaded
    assert sorted(loaded) == sorted(base_names)  # no peft prefix, no .base_layer, no lora_A/lora_B
    assert torch.allclose(dict(engine.model.named_parameters())["transformer.h.0.attn.c_attn.weight"], expected)
    assert not torch.allclose(expected, base_before)
    assert torch.equal(layer.base_layer.weight, base_before)  # the base is back, bitwise
    assert not layer.disable_adapters  # and its adapters on again


def test_adapters_that_cannot_merge_stop_the_run_with_a_message(llm_class, tiny, tiny_model_dir, sampling):
    policy = _lora_policy(tiny_model_dir)
    rollouts = _rollouts(policy, tiny[0], sampling(tiny[0]))  # a "merge" that leaves the adapters on
    with pytest.raises(RuntimeFailure, match="cannot be merged"):
        rollouts.generate(PROMPTS, 40)
    assert llm_class.instances[0].engine_model.loaded == []


def test_sleep_mode_wakes_the_weights_to_sync_and_sleeps_after_each_rollout(llm_class, tiny, tiny_model_dir,
                                                                           sampling):
    policy = _policy(tiny_model_dir)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    rollouts = _rollouts(policy, tiny[0], sampling(tiny[0]), optimizer=optimizer, vllm_sleep_between_rollouts=True)
    rollouts.generate(PROMPTS, 40)
    rollouts.generate(PROMPTS, 40)
    optimizer.step()
    rollouts.generate(PROMPTS, 40)

    llm = llm_class.instances[0]
    assert llm.kwargs["enable_sleep_mode"] is True
    assert llm.calls == [
        "apply_model", "reset_prefix_cache", "generate", ("sleep", 1),
        ("wake_up", ("weights",)), ("wake_up", ("kv_cache",)), "generate", ("sleep", 1),
        ("wake_up", ("weights",)), "apply_model", "reset_prefix_cache", ("wake_up", ("kv_cache",)), "generate",
        ("sleep", 1)]


# ----------------------------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(("name", "engine_name"), [
    ("transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.weight"),
    ("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight", "model.layers.0.self_attn.q_proj.weight"),
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", None),
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight", None),
    ("base_model.model.lm_head.modules_to_save.default.weight", "lm_head.weight"),
    ("base_model.model.lm_head.original_module.weight", None),
])
def test_engine_weight_names_are_transformers_checkpoint_names(name, engine_name):
    assert engine_weight_name(name) == engine_name


def test_the_launcher_environment_is_a_rank_of_its_own_on_the_policys_gpu(monkeypatch):
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(variable, raising=False)
    set_launcher_environment(torch.device("cuda", 1))
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("0", "1", "1")
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0
    monkeypatch.setenv("RANK", "3")  # a Ray Train worker's own variables are kept
    set_launcher_environment(torch.device("cuda", 0))
    assert os.environ["RANK"] == "3" and os.environ["LOCAL_RANK"] == "0"


def test_a_policy_off_cuda_is_refused():
    with pytest.raises(RuntimeFailure, match="CUDA GPU"):
        set_launcher_environment(torch.device("cpu"))
