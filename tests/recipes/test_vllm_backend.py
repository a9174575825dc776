"""generation.backend = "vllm" wired into PPO and GRPO (recipes/ppo_trainer.py, recipes/grpo_trainer.py): whole runs
in this process with the stand-in vllm (tests/models/fake_vllm.py) on CPU, and one real PPO run with vLLM that
runs only where CUDA and vLLM are installed."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from rlhfctl.models import vllm_engine
from rlhfctl.models.vllm_preflight import vllm_importable
from rlhfctl.recipes import grpo, ppo
from tests.models import fake_vllm
from tests.recipes import test_grpo, test_ppo


@pytest.fixture
def cpu_vllm(monkeypatch):
    """The stand-in vllm, with the driver's GPU check and the engine's CUDA placement skipped on this CPU
    machine (both are tested in tests/models)."""
    llm_class = fake_vllm.install(monkeypatch)
    monkeypatch.setattr(vllm_engine, "set_launcher_environment", lambda device: None)
    for recipe in (ppo, grpo):
        monkeypatch.setattr(recipe, "check_vllm_settings", lambda config: None)
    return llm_class


def test_ppo_samples_with_the_engine_syncs_after_updates_and_takes_old_logprobs_from_the_policy(
        tmp_path, tiny_model_dir, cpu_vllm):
    train_file = test_ppo.few_prompts(tmp_path, 16)  # 2 iterations of 8 prompts
    config = test_ppo.make_config(tmp_path, tiny_model_dir, tiny_model_dir, train_file=train_file,
                                  validation_file=test_ppo.few_prompts(tmp_path, 8, "heldout_prompts.jsonl"),
                                  ppo_epochs=1, num_mini_batches=1)
    config = config.model_copy(update={"generation": config.generation.model_copy(update={"backend": "vllm"})})

    final = test_ppo.run_inline(config, tmp_path / "ckpt")

    (llm,) = cpu_vllm.instances  # one engine for the whole run
    assert llm.kwargs["max_model_len"] == config.dataset.max_length and llm.kwargs["seed"] == config.general.seed
    # validation, iteration 1, iteration 2, validation: the weights went in before the first rollout and after
    # each of the two updates, not before iteration 1 (nothing had changed)
    assert llm.calls.count("generate") == 4
    assert len(llm.engine_model.loaded) == 3
    assert all(params.kwargs["n"] == 1 and params.kwargs["max_tokens"] == 16 for _, params in llm.requests)
    # one pass over one mini-batch: the first update's ratio is 1 only if the old log-probs are the policy's own
    assert final["train_ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert final["train_policy_clip_fraction"] == 0.0
    assert all(math.isfinite(value) for value in final.values())


def test_grpo_asks_the_engine_for_a_group_per_prompt(tmp_path, tiny_model_dir, cpu_vllm):
    config = test_grpo.make_config(tmp_path, tiny_model_dir, train_file=test_grpo.few_prompts(tmp_path, 16),
                                   validation_file=None, ppo_epochs=2)
    config = config.model_copy(update={"generation": config.generation.model_copy(update={"backend": "vllm"})})

    final = test_grpo.run_inline(config, tmp_path / "ckpt")

    (llm,) = cpu_vllm.instances
    # validation (one prompt split off the 16), 2 iterations of 8 prompts, validation: each training prompt once,
    # for its group of num_generations completions
    assert [(len(prompts), params.kwargs["n"]) for prompts, params in llm.requests] == [(1, 1), (8, 4), (8, 4),
                                                                                        (1, 1)]
    # weights in before the first rollout and after each iteration's updates, not before iteration 1
    assert len(llm.engine_model.loaded) == 3
    assert all(math.isfinite(value) for value in final.values())


@pytest.mark.slow
@pytest.mark.skipif(not (torch.cuda.is_available() and vllm_importable()),
                    reason="needs a CUDA GPU and vLLM (pip install 'rlhfctl[vllm]')")
def test_a_tiny_ppo_run_with_real_vllm_on_a_gpu(tmp_path, tiny_model_dir):
    config = test_ppo.make_config(tmp_path, tiny_model_dir, tiny_model_dir, train_file=test_ppo.few_prompts(
        tmp_path, 16), validation_file=None, ppo_epochs=1, num_mini_batches=1,
        resources_per_worker={"CPU": 1, "GPU": 1})
    config = config.model_copy(update={"generation": config.generation.model_copy(update={
        "backend": "vllm", "vllm_gpu_memory_utilization": 0.2, "vllm_dtype": "float32"})})

    final = test_ppo.run_inline(config, tmp_path / "ckpt")

    assert final["train_ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert 0 < final["train_response_length_mean"] <= 16
    assert all(math.isfinite(value) for value in final.values())
