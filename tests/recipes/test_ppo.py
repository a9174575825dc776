"""The PPO stage: planning checks, exact resume and NaN handling in-process, and a 2-worker Ray run that learns."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from rlhfctl.config.schema import LoraConfig, PPOConfig
from rlhfctl.errors import ConfigError, RuntimeFailure
from rlhfctl.recipes import ppo
from rlhfctl.recipes.reward_source import RewardStats, reward_head_warning

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT / "examples" / "data"
TIMING_KEYS = ("time_", "episodes_per_s")


def make_config(tmp_path: Path, policy: Path, reward: Path, *, train_file: Path = DATA / "ppo.jsonl",
                validation_file: Path | None = DATA / "heldout_prompts.jsonl", lora: dict | None = None,
                **training) -> PPOConfig:
    options = {"num_training_workers": 1, "experience_batch_size": 8, "batch_size": 8, "num_mini_batches": 2,
               "ppo_epochs": 2, "learning_rate": 3e-4, "save_every_steps": 0, "sample_every_steps": 2,
               "max_failures": 0, **training}
    dataset = {"train_file": str(train_file), "max_length": 96}
    if validation_file is not None:
        dataset["validation_file"] = str(validation_file)
    return PPOConfig.model_validate({
        "general": {"output_dir": str(tmp_path / "run"), "checkpoint_dir": str(tmp_path / "export"), "seed": 3,
                    "model_name": str(policy), "rm_name": str(reward)},
        "dataset": dataset,
        "training": options,
        "generation": {"max_new_tokens": 16},
        **({"lora": lora} if lora is not None else {}),
    })


def few_prompts(tmp_path: Path, count: int, source: str = "ppo.jsonl") -> Path:
    """The first ``count`` prompts of ``examples/data/<source>`` in a file of their own."""
    lines = (DATA / source).read_text(encoding="utf-8").splitlines()[:count]
    path = tmp_path / f"{Path(source).stem}_{count}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_inline(config: PPOConfig, run_dir: Path, *, resume_from: Path | None = None) -> dict:
    """The worker loop in this process (the core's local mode): no Ray, checkpoints in ``run_dir``."""
    from rlhfctl.training.worker import CoreSettings

    job = ppo.build_job(config)
    core = CoreSettings(stage="ppo", mode="local", run_dir=str(run_dir), checkpoint_dir=str(job.checkpoint_dir),
                        total_steps=job.total_steps, samples_per_step=job.samples_per_step,
                        resume_from=None if resume_from is None else str(resume_from), num_to_keep=100)
    return ppo.train_loop(job.loop_config(core))


def without_timings(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if not any(part in key for part in TIMING_KEYS)}


# ----------------------------------------------------------------------------------------------- planning


def test_plan_counts_iterations_per_worker(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir, tiny_model_dir, num_training_workers=2, epochs=2)
    ppo_plan = ppo.prepare(config)
    # 300 prompts / 2 workers = 150 each -> ceil(150 / 8) = 19 iterations per epoch
    assert len(ppo_plan.data.train) == 300 and len(ppo_plan.data.validation) == 32
    assert ppo_plan.iterations_per_epoch == 19 and ppo_plan.total_steps == 38
    assert ppo_plan.episodes_per_step == 16
    printable = ppo.plan(config)
    assert printable.total_steps == 38 and printable.stage == "ppo"


def test_plan_refuses_inconsistent_settings(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir, tiny_model_dir, num_mini_batches=3,
                         gradient_accumulation_steps=2)
    config.dataset.max_length = 16
    with pytest.raises(ConfigError) as caught:
        ppo.prepare(config)
    keys = {issue.key for issue in caught.value.issues}
    assert keys == {"training.num_mini_batches", "training.gradient_accumulation_steps", "dataset.max_length"}
    # 300 prompts, 8 per iteration: 38 iterations, all of them value warm-up
    with pytest.raises(ConfigError, match="fewer than the run's 38 PPO iterations"):
        ppo.prepare(make_config(tmp_path, tiny_model_dir, tiny_model_dir, value_warmup_steps=38))


def test_untrained_reward_head_is_warned_about(tmp_path, tiny_model_dir):
    warning = reward_head_warning(str(tiny_model_dir))
    assert warning is not None and "random reward" in warning
    assert ppo.prepare(make_config(tmp_path, tiny_model_dir, tiny_model_dir)).warnings == (warning,)
    assert "warning 1" in ppo.plan(make_config(tmp_path, tiny_model_dir, tiny_model_dir)).notes


def test_reward_stats_are_required_for_normalised_scores(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir, tiny_model_dir, normalize_scores=True)
    with pytest.raises(ConfigError, match="rm_pretrain"):
        ppo.prepare(config)
    rm_export = tmp_path / "rm_export"
    rm_export.mkdir()
    config.general.rm_pretrain = rm_export
    with pytest.raises(ConfigError, match="does not exist"):
        ppo.prepare(config)
    (rm_export / "reward_stats.json").write_text(json.dumps({"mean": 0.5, "std": 2.0}), encoding="utf-8")
    assert ppo.prepare(config).reward_stats == RewardStats(mean=0.5, std=2.0)
    (rm_export / "reward_stats.json").write_text(json.dumps({"mean": 0.5, "std": 0.0}), encoding="utf-8")
    with pytest.raises(ConfigError, match="std > 0"):
        ppo.prepare(config)


def test_scores_are_normalised_by_default_when_the_rm_export_has_statistics(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir, tiny_model_dir)
    assert config.training.normalize_scores == "auto"
    assert ppo.prepare(config).reward_stats is None  # no RM export: raw scores, said in the plan
    assert ppo.plan(config).notes["scores"].startswith("raw (no reward_stats.json")
    rm_export = tmp_path / "rm_export"
    rm_export.mkdir()
    config.general.rm_pretrain = rm_export
    assert ppo.prepare(config).reward_stats is None  # an export without the file: raw as well
    (rm_export / "reward_stats.json").write_text(json.dumps({"mean": 0.5, "std": 2.0}), encoding="utf-8")
    assert ppo.prepare(config).reward_stats == RewardStats(mean=0.5, std=2.0)
    assert ppo.plan(config).notes["scores"].startswith("normalised: (score - 0.5) / 2 ")
    (rm_export / "reward_stats.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="not JSON"):  # a broken file is never ignored
        ppo.prepare(config)
    config.training.normalize_scores = False
    assert ppo.prepare(config).reward_stats is None


def test_the_plan_states_the_kl_target_and_zero_fixes_the_coefficient(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir, tiny_model_dir)
    assert config.training.target_kl == 2.5
    assert ppo.plan(config).notes["KL"] == "k1, coef 0.05 adapting toward 2.5"
    config.training.target_kl = 0.0
    assert ppo.plan(config).notes["KL"] == "k1, coef 0.05 (fixed)"


# ----------------------------------------------------------------------------------------------- in-process runs


@pytest.mark.parametrize("lora", [None, {"r": 4, "dropout": 0.1}], ids=["full", "lora"])
def test_resume_from_a_middle_checkpoint_reproduces_the_uninterrupted_run(tmp_path, tiny_model_dir, lora):
    """With LoRA too (adapter dropout draws from the restored RNG; the checkpoint holds adapters and heads only)."""
    from safetensors.torch import load_file

    prompts = few_prompts(tmp_path, 32)
    config = make_config(tmp_path / "a", tiny_model_dir, tiny_model_dir, train_file=prompts,
                         validation_file=None, epochs=2, save_every_steps=2, lora=lora)
    full = run_inline(config, tmp_path / "a" / "ckpt")  # 4 iterations per epoch, 8 in all
    checkpoints = sorted((tmp_path / "a" / "ckpt").glob("checkpoint_*"))
    assert [path.name for path in checkpoints] == [f"checkpoint_{step:08d}" for step in (2, 4, 6, 8)]
    middle = checkpoints[2]  # step 6: epoch 1, 2 of 4 batches done
    assert json.loads((middle / "state.json").read_text())["batch_in_epoch"] == 2

    resumed_config = make_config(tmp_path / "b", tiny_model_dir, tiny_model_dir, train_file=prompts,
                                 validation_file=None, epochs=2, save_every_steps=2, lora=lora)
    resumed = run_inline(resumed_config, tmp_path / "b" / "ckpt", resume_from=middle)

    assert without_timings(resumed) == without_timings(full)
    weights_full = load_file(str(tmp_path / "a" / "export" / "model.safetensors"))
    weights_resumed = load_file(str(tmp_path / "b" / "export" / "model.safetensors"))
    assert all((weights_full[name] == weights_resumed[name]).all() for name in weights_full)
    state = json.loads((checkpoints[-1] / "state.json").read_text())
    assert state["model_contents"] == {name: "trainable" if lora else "full" for name in ("policy", "value_model")}
    assert state["extra"]["episodes"] == 8 * 8
    assert set(state["extra"]["kl_controller"]) == {"value", "target", "horizon"}


def test_value_warmup_trains_only_the_value_model_then_both(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    prompts = few_prompts(tmp_path, 24)  # 3 iterations: 2 of value warm-up, then one PPO update of both models
    config = make_config(tmp_path, tiny_model_dir, tiny_model_dir, train_file=prompts, validation_file=None,
                         value_warmup_steps=2, target_kl=0.5, kl_horizon=16, save_every_steps=2)
    final = run_inline(config, tmp_path / "ckpt")
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    after_warmup = tmp_path / "ckpt" / "checkpoint_00000002"
    policy = load_file(str(after_warmup / "model.policy.safetensors"))
    assert same_weights(policy, initial)  # the policy waited
    value = load_file(str(after_warmup / "model.value_model.safetensors"))
    assert not same_weights(value, initial, prefix="model.")  # the critic learned
    extra = json.loads((after_warmup / "state.json").read_text())["extra"]
    assert extra["kl_controller"]["value"] == config.training.kl_coeff  # the controller waits with the policy
    # iteration 3 trains the policy, with the coefficient untouched by the warm-up iterations' KL
    assert final["train_grad_norm_policy"] > 0.0 and final["train_grad_norm_value"] > 0.0
    assert final["train_kl_coef"] == config.training.kl_coeff
    trained = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert not same_weights(trained, initial)


def same_weights(saved: dict, initial: dict, prefix: str = "") -> bool:
    """Every tensor of ``initial`` equal in ``saved`` (names there carry ``prefix``; tied copies may be absent)."""
    shared = [name for name in initial if prefix + name in saved]
    assert len(shared) >= len(initial) - 1, "the two state dicts do not describe the same model"
    return all(bool((saved[prefix + name] == initial[name]).all()) for name in shared)


def test_nonfinite_loss_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    from rlhfctl.objectives import ppo as ppo_math

    prompts = few_prompts(tmp_path, 16)
    config = make_config(tmp_path, tiny_model_dir, tiny_model_dir, train_file=prompts, validation_file=None,
                         save_every_steps=1)
    real_loss = ppo_math.clipped_policy_loss
    calls = {"count": 0}

    def loss_turning_nan(*args, **kwargs):
        calls["count"] += 1
        result = real_loss(*args, **kwargs)
        # iteration 1 is fine (2 PPO epochs x 2 mini-batches = 4 calls), iteration 2 diverges
        return result._replace(loss=result.loss * float("nan")) if calls["count"] > 4 else result

    monkeypatch.setattr(ppo_math, "clipped_policy_loss", loss_turning_nan)
    with pytest.raises(RuntimeFailure, match="step 2: the loss is not finite"):
        run_inline(config, tmp_path / "ckpt")
    assert [path.name for path in (tmp_path / "ckpt").glob("checkpoint_*")] == ["checkpoint_00000001"]
    assert not (tmp_path / "export").exists()


# ----------------------------------------------------------------------------------------------- Ray end to end


def ray_config(tmp_path: Path, models) -> PPOConfig:
    sft_export, rm_export = models
    config = make_config(tmp_path, sft_export, rm_export, num_training_workers=2, save_every_steps=4,
                         ppo_epochs=4, sample_every_steps=5)
    config.general.model_pretrain, config.general.rm_pretrain = sft_export, rm_export
    return config


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ppo_on_two_ray_workers_raises_heldout_reward_with_bounded_kl_and_resumes_exactly(tmp_path, trained_models):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    # -- the uninterrupted run
    config = ray_config(tmp_path / "full", trained_models)
    summary = ppo.run(config)
    metrics = summary.final_metrics
    assert summary.steps == 19
    before, after = metrics["validation_initial_score_mean"], metrics["validation_score_mean"]
    print(f"\nheld-out RM score {before:.3f} -> {after:.3f}, KL(k1) {metrics['validation_kl_k1']:.2f} nats, "
          f"{metrics['train_episodes_per_s']:.1f} episodes/s")
    assert after - before > 1.0  # the RM's scores span about [-2.5, 2.5]: polite replies win
    assert 0.0 < metrics["validation_kl_k1"] < 25.0
    train_lines = [line for line in summary.history if line["split"] == "train"]
    assert {"score_mean", "score_std", "non_score_reward", "kl_k1", "kl_k3", "entropy", "policy_loss",
            "value_loss", "policy_clip_fraction", "value_clip_fraction", "approx_kl", "ratio_mean",
            "explained_variance", "response_length_mean", "eos_rate", "learning_rate", "kl_coef",
            "time_generate_s", "time_score_s", "time_train_s", "episodes_per_s"} <= set(train_lines[-1])
    assert all(math.isfinite(line["kl_k1"]) for line in train_lines)
    samples = [json.loads(line) for line in (tmp_path / "full" / "run" / "samples.jsonl").read_text().splitlines()]
    assert {"prompt", "response", "score"} <= set(samples[0])

    # -- the export loads with plain transformers
    export = tmp_path / "full" / "export"
    policy = AutoModelForCausalLM.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    ids = tokenizer("\n\nHuman: hi\n\nAssistant:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert policy.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]
    assert AutoModelForSequenceClassification.from_pretrained(export / "value_model").config.num_labels == 1

    # -- a run killed after its step-8 checkpoint, then --resume: the same final metrics
    from rlhfctl.training.launch import run_training

    killed = ray_config(tmp_path / "killed", trained_models)
    job = ppo.build_job(killed)
    with pytest.raises(RuntimeFailure):
        run_training(job, fault_injection={"after_step": 8, "marker": str(tmp_path / "killed.marker")})
    resumed = ppo.run(killed, resume=True)
    assert resumed.resumed_from_step == 8
    assert without_timings(resumed.final_metrics) == pytest.approx(without_timings(metrics), rel=1e-6, abs=1e-9)
    shutil.rmtree(tmp_path / "killed" / "run", ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lora_ppo_on_two_ray_workers_raises_heldout_reward_with_one_copy_of_each_base(tmp_path, trained_models):
    """DDP over adapters: the value model's adapters and head train on the reward model's base, the reference is
    the policy without adapters; gradient checkpointing on. The exports are adapter folders peft loads."""
    from peft import AutoPeftModelForCausalLM

    config = ray_config(tmp_path, trained_models).model_copy(update={"lora": LoraConfig(r=8, merge_on_export=False)})
    config.training.learning_rate, config.training.gradient_checkpointing = 3e-3, True
    summary = ppo.run(config)
    metrics = summary.final_metrics
    before, after = metrics["validation_initial_score_mean"], metrics["validation_score_mean"]
    print(f"\nLoRA: held-out RM score {before:.3f} -> {after:.3f}, KL(k1) {metrics['validation_kl_k1']:.2f} nats, "
          f"{metrics['train_episodes_per_s']:.1f} episodes/s, parameters {summary.parameters}")
    assert after - before > 1.0
    trainable, total = summary.parameters
    assert trainable < 0.1 * total  # adapters and the value head
    policy = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "export")
    assert policy.peft_config["default"].base_model_name_or_path == str(trained_models[0])
    assert (tmp_path / "export" / "value_model" / "adapter_config.json").is_file()
