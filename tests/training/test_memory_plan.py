"""The plan of a real recipe's job (config.json only, no weights), the verdict, the advice and the refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfctl.config.loader import load_config
from rlhfctl.errors import UserError
from rlhfctl.recipes.registry import load_recipe
from rlhfctl.training.memory_plan import (
    REFUSE_RATIO,
    WorkerMemoryCheck,
    check_memory,
    judge,
    plan_memory,
)
from rlhfctl.training.memory_probe import DeviceMemory

REPO_ROOT = Path(__file__).resolve().parents[2]
GiB, MiB = 1024**3, 1024**2
LLAMA_60M = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 512, "num_hidden_layers": 8,
             "num_attention_heads": 8, "intermediate_size": 1536, "max_position_embeddings": 1024}


@pytest.fixture()
def shape_only_model(tmp_path) -> Path:
    """A model folder with nothing but config.json: the plan never loads weights."""
    folder = tmp_path / "llama60m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_60M), encoding="utf-8")
    return folder


def sft_job(tmp_path: Path, model: Path, *overrides: str):
    config = load_config(REPO_ROOT / "examples" / "configs" / "sft.toml", overrides=[
        f"general.base_model={model}", f"general.output_dir={tmp_path / 'run'}",
        f"general.checkpoint_dir={tmp_path / 'export'}", "dataset.max_length=256", "training.batch_size=8",
        *overrides])
    return load_recipe("sft").build_job(config)


def fixed(bytes_per_worker: int, device: str = "cpu"):
    return lambda job: DeviceMemory(bytes_per_worker, device, "test machine")


def test_judge_refuses_only_beyond_the_margin():
    assert judge(100, 100) == "fits"
    assert judge(119, 100) == "tight"
    assert judge(int(100 * REFUSE_RATIO) + 1, 100) == "refuse"


def test_the_plan_of_an_sft_job_from_config_json_alone(tmp_path, shape_only_model):
    plan = plan_memory(sft_job(tmp_path, shape_only_model), probe=fixed(64 * GiB))
    assert plan.verdict == "fits" and plan.advice == ()
    estimate = plan.estimate
    # embeddings and the untied head 2 x 32000 x 512; 8 blocks of q/k/v/o 512 x 512, gate/up/down 512 x 1536 and
    # two norms; the final norm
    parameters = 2 * 32000 * 512 + 8 * (4 * 512 * 512 + 3 * 512 * 1536 + 2 * 512) + 512
    assert estimate.trainable_parameters == estimate.total_parameters == parameters == 60_039_680
    assert estimate.breakdown.weights == 4 * parameters
    assert plan.shapes_by_role["model"].model_type == "llama"
    rows = dict(plan.lines())
    assert rows["memory peak"].startswith(f"{estimate.per_worker_peak_bytes / GiB:.1f} GiB per worker (cpu, at the ")
    assert rows["memory available"] == "64.0 GiB per worker (test machine): fits"
    data = plan.to_dict()
    assert data["per_worker_peak_bytes"] == estimate.per_worker_peak_bytes
    assert data["models"]["model"] == {"source": str(shape_only_model), "model_type": "llama", "head": "lm",
                                       "trained": True}


def test_a_plan_without_a_readable_config_says_why(tmp_path):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    plan = plan_memory(sft_job(tmp_path, empty), probe=fixed(GiB))
    assert plan.estimate is None and plan.verdict == "unknown"
    assert plan.unknown == f"the model ({empty} has no config.json)"
    assert plan.to_dict() == {"per_worker_peak_bytes": None, "unknown": plan.unknown}
    check_memory(sft_job(tmp_path, empty), probe=fixed(1))  # unknown: never refused


def test_advice_names_the_largest_batch_that_fits(tmp_path, shape_only_model):
    job = sft_job(tmp_path, shape_only_model)
    full = plan_memory(job, probe=None).estimate.per_worker_peak_bytes
    at_two = plan_memory(sft_job(tmp_path, shape_only_model, "training.batch_size=2"),
                         probe=None).estimate.per_worker_peak_bytes
    plan = plan_memory(job, probe=fixed(int(at_two * 1.01)))
    assert plan.verdict == "refuse"
    assert [item.setting for item in plan.advice] == ["training.batch_size = 2"]
    assert plan.advice[0].per_worker_peak_bytes == at_two < full


def test_the_refusal_gives_the_numbers_and_the_way_out(tmp_path, shape_only_model):
    job = sft_job(tmp_path, shape_only_model)
    with pytest.raises(UserError) as raised:
        check_memory(job, probe=fixed(512 * MiB))
    message, hint = str(raised.value), raised.value.hint
    assert message.startswith("this sft run needs about ") and "but a worker has 512 MiB (test machine)" in message
    assert "optimizer state" in message and "weights" in message
    assert hint.endswith("If you know better, pass --no-memory-check.")
    assert "No single setting makes it fit" in hint  # 512 MiB: not even batch 1 fits a 60 M model with Adam


def test_a_tight_fit_runs_and_a_comfortable_one_is_quiet(tmp_path, shape_only_model):
    job = sft_job(tmp_path, shape_only_model)
    peak = plan_memory(job, probe=None).estimate.per_worker_peak_bytes
    assert check_memory(job, probe=fixed(int(peak / 1.1))).verdict == "tight"
    assert check_memory(job, probe=fixed(peak)).verdict == "fits"
    assert "may not fit" in check_memory(job, probe=fixed(int(peak / 1.1))).tight_notice()


def test_no_probe_means_not_known_here(tmp_path, shape_only_model):
    plan = plan_memory(sft_job(tmp_path, shape_only_model), probe=lambda job: None)
    assert plan.available is None and plan.verdict == "unknown"
    assert dict(plan.lines())["memory available"].startswith("not known here")
    check = WorkerMemoryCheck.for_workers("sft", plan)
    assert check is not None
    check.check(DeviceMemory(64 * GiB, "cpu", "node"))  # fits: nothing happens
    check.check(None)  # unknown on the worker too: nothing happens
    with pytest.raises(UserError, match="but a worker has 100 MiB \\(node\\)"):
        check.check(DeviceMemory(100 * MiB, "cpu", "node"))
    assert WorkerMemoryCheck.for_workers("sft", plan_memory(sft_job(tmp_path, shape_only_model),
                                                            probe=fixed(GiB))) is None


@pytest.mark.parametrize("stage", ["rm", "ppo"])
def test_every_stage_plans_from_config_json(tmp_path, shape_only_model, stage):
    model = str(shape_only_model)
    paths = [f"general.output_dir={tmp_path / 'run'}", f"general.checkpoint_dir={tmp_path / 'export'}"]
    if stage == "rm":
        overrides = [f"general.base_model={model}", *paths]
    else:
        overrides = [f"general.model_name={model}", f"general.rm_name={model}", f"general.model_pretrain={model}",
                     f"general.rm_pretrain={model}", *paths]
    config = load_config(REPO_ROOT / "examples" / "configs" / f"{stage}.toml", overrides=overrides)
    plan = plan_memory(load_recipe(stage).build_job(config), probe=fixed(64 * GiB))
    assert plan.unknown is None
    roles = {"rm": {"reward_model"}, "ppo": {"policy", "reference", "reward_model", "value_model"}}[stage]
    assert set(plan.estimate.per_model) == roles
    assert plan.estimate.per_worker_peak_bytes == plan.estimate.breakdown.total


def test_lora_and_checkpointing_in_the_config_reach_the_plan(tmp_path, shape_only_model):
    full = plan_memory(sft_job(tmp_path, shape_only_model), probe=fixed(64 * GiB)).estimate
    lora = plan_memory(sft_job(tmp_path, shape_only_model, "lora.r=8"), probe=fixed(64 * GiB)).estimate
    # adapters on q/k/v/o (512 -> 512), gate/up (512 -> 1536) and down (1536 -> 512) of 8 blocks: r * (in + out)
    adapters = 8 * 8 * (4 * (512 + 512) + 3 * (512 + 1536))
    assert lora.trainable_parameters == adapters == 655_360
    assert lora.breakdown.optimizer_state == 8 * adapters  # AdamW: two fp32 states per adapter parameter
    # every gradient the policy has (the peak's breakdown holds only those alive at the peak: none for one worker)
    assert lora.per_model["model"].gradients < full.per_model["model"].gradients / 20
    assert lora.per_worker_peak_bytes < full.per_worker_peak_bytes - full.breakdown.optimizer_state
    listed = plan_memory(sft_job(tmp_path, shape_only_model, 'lora.target_modules=["q_proj", "v_proj"]'),
                         probe=fixed(64 * GiB)).estimate
    assert listed.trainable_parameters == 8 * 8 * 2 * (512 + 512)
    checkpointed = plan_memory(sft_job(tmp_path, shape_only_model, "training.gradient_checkpointing=true"),
                               probe=fixed(64 * GiB)).estimate
    assert checkpointed.breakdown.activations < full.breakdown.activations
    assert checkpointed.breakdown.weights == full.breakdown.weights


def test_lora_ppo_holds_each_base_once(tmp_path, shape_only_model):
    model = str(shape_only_model)
    config = load_config(REPO_ROOT / "examples" / "configs" / "ppo.toml", overrides=[
        f"general.model_name={model}", f"general.rm_name={model}", f"general.model_pretrain={model}",
        f"general.rm_pretrain={model}", f"general.output_dir={tmp_path / 'run'}",
        f"general.checkpoint_dir={tmp_path / 'export'}", "lora.r=8", "training.value_model_init=reward"])
    per_model = plan_memory(load_recipe("ppo").build_job(config), probe=fixed(64 * GiB)).estimate.per_model
    # the reference is the policy with its adapter off, the reward model the value model's base with its adapter off
    assert per_model["reference"].weights == 0 and per_model["reward_model"].weights == 0
    assert per_model["policy"].weights > 0 and per_model["value_model"].weights > 0


def test_the_plan_counts_the_allocator_policy_the_workers_run_with(tmp_path, shape_only_model, monkeypatch):
    from rlhfctl.training import allocator

    if allocator.load_glibc() is None:
        pytest.skip("not a glibc system: the policy never applies")
    monkeypatch.setenv("RLHFCTL_MALLOC", "release")
    policy = plan_memory(sft_job(tmp_path, shape_only_model), probe=fixed(64 * GiB)).estimate
    monkeypatch.delenv("RLHFCTL_MALLOC")  # glibc's dynamic threshold (the default): freed activations stay resident
    default = plan_memory(sft_job(tmp_path, shape_only_model), probe=fixed(64 * GiB)).estimate
    assert policy.breakdown.weights == default.breakdown.weights
    assert policy.breakdown.activations < default.breakdown.activations


def test_a_vllm_engine_reserves_its_share_of_each_gpu_and_the_builtin_backend_none(tmp_path, shape_only_model,
                                                                                   monkeypatch):
    import importlib.machinery
    import sys
    import types

    module = types.ModuleType("vllm")  # importable for the driver's check; never imported by the plan
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    monkeypatch.setitem(sys.modules, "vllm", module)
    model = str(shape_only_model)

    def ppo_job(*overrides: str):
        config = load_config(REPO_ROOT / "examples" / "configs" / "ppo.toml", overrides=[
            f"general.model_name={model}", f"general.rm_name={model}", f"general.model_pretrain={model}",
            f"general.rm_pretrain={model}", f"general.output_dir={tmp_path / 'run'}",
            f"general.checkpoint_dir={tmp_path / 'export'}", "training.resources_per_worker={ CPU = 1, GPU = 1 }",
            *overrides])
        return load_recipe("ppo").build_job(config)

    gpu = fixed(80 * GiB, "cuda")
    builtin = plan_memory(ppo_job(), probe=gpu)
    engine = plan_memory(ppo_job("generation.backend=vllm", "generation.vllm_gpu_memory_utilization=0.25"),
                         probe=gpu)
    assert builtin.available.bytes_per_worker == 80 * GiB and builtin.engine_reserved_fraction == 0
    assert "engine_reserved_fraction" not in builtin.to_dict()
    assert not any("vLLM" in note for note in builtin.estimate.notes)
    # training's own estimate is the same; a quarter of the GPU is the engine's
    assert engine.estimate.per_worker_peak_bytes == builtin.estimate.per_worker_peak_bytes
    assert engine.available.bytes_per_worker == int(80 * GiB * 0.75)
    assert engine.available.source == "test machine, less 0.25 of it for the vLLM engine"
    assert engine.to_dict()["engine_reserved_fraction"] == 0.25
    assert any("vLLM engine reserves 0.25 of its GPU" in text for _, text in engine.lines())

    # a worker that checks its own GPU takes the reservation off too
    peak = builtin.estimate.per_worker_peak_bytes
    check = WorkerMemoryCheck.for_workers("ppo", plan_memory(ppo_job("generation.backend=vllm",
                                                                     "generation.vllm_gpu_memory_utilization=0.5"),
                                                             probe=None))
    assert WorkerMemoryCheck.for_workers("ppo", plan_memory(ppo_job(), probe=None)).engine_reserved_fraction == 0
    with pytest.raises(UserError, match="less 0.5 of it for the vLLM engine"):
        check.check(DeviceMemory(peak, "cuda", "H100"))
    WorkerMemoryCheck.for_workers("ppo", plan_memory(ppo_job(), probe=None)).check(DeviceMemory(peak, "cuda", "H100"))
