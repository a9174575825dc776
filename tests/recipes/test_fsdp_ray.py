"""``training.strategy = "fsdp"`` end to end on 2 Ray Train workers x 1 CPU: the RM learns and exports a plain HF
model, sharded checkpoints resume exactly (and on one worker, and a DDP checkpoint resumes under FSDP); PPO (with
and without LoRA) trains, resumes exactly and exports policy and value model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfctl.cli.app import app
from rlhfctl.config import load_config
from rlhfctl.errors import RuntimeFailure
from rlhfctl.recipes import ppo, rm

REPO_ROOT = Path(__file__).resolve().parents[2]
RM_CONFIG = REPO_ROOT / "examples" / "configs" / "rm.toml"
RM_DATA = REPO_ROOT / "examples" / "data" / "rm.jsonl"
runner = CliRunner()

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _rm_overrides(run_dir: Path, model_dir: Path, *, strategy: str = "fsdp", workers: int = 2,
                  max_failures: int = 1) -> list[str]:
    return [f"general.base_model={model_dir}", f"general.output_dir={run_dir / 'run'}",
            f"general.checkpoint_dir={run_dir / 'model'}", f"training.num_training_workers={workers}",
            "training.save_every_steps=10", f"training.max_failures={max_failures}", f"training.strategy={strategy}"]


def _final_validation(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [row for row in rows if row["split"] == "validation"][-1]
    return {key: value for key, value in last.items() if key != "time"}


def _kill_after_step_10(run_dir: Path, model_dir: Path, strategy: str) -> None:
    config = load_config(RM_CONFIG, overrides=_rm_overrides(run_dir, model_dir, strategy=strategy, max_failures=0))
    with pytest.raises(RuntimeFailure):
        rm.run(config, fault_injection={"after_step": 10, "marker": str(run_dir / "killed"), "action": "kill"})


@pytest.fixture(scope="module")
def rm_reference(tmp_path_factory, tiny_model_dir, ray_cluster) -> Path:
    """The uninterrupted 2-worker FSDP run, through the CLI."""
    run_dir = tmp_path_factory.mktemp("rm-fsdp-reference")
    result = runner.invoke(app, ["rm", "train", str(RM_CONFIG), *_rm_overrides(run_dir, tiny_model_dir)])
    assert result.exit_code == 0, result.output
    return run_dir


def test_rm_under_fsdp_learns_writes_sharded_checkpoints_and_exports_a_plain_hf_model(rm_reference):
    from transformers import AutoModelForSequenceClassification

    final = _final_validation(rm_reference)
    assert final["step"] > 10 and final["accuracy"] >= 0.9
    checkpoint = sorted((rm_reference / "run" / "rm_run").glob("checkpoint_0*"))[-1]
    state = json.loads((checkpoint / "state.json").read_text())
    assert (state["strategy"], state["world_size"]) == ("fsdp", 2)
    assert sorted(state["files"]) == ["shards/.metadata", "shards/__0_0.distcp", "shards/__1_0.distcp"]
    assert not list(checkpoint.glob("*.safetensors"))
    model = AutoModelForSequenceClassification.from_pretrained(rm_reference / "model")
    assert model.config.architectures == ["GPT2ForSequenceClassification"]
    evaluated = runner.invoke(app, ["rm", "eval", str(rm_reference / "model"), str(RM_DATA), "--json"])
    assert json.loads(evaluated.output)["accuracy"] >= 0.9


def test_rm_under_fsdp_resumes_exactly_after_a_failure(rm_reference, tmp_path, tiny_model_dir):
    _kill_after_step_10(tmp_path, tiny_model_dir, "fsdp")
    config = load_config(RM_CONFIG, overrides=_rm_overrides(tmp_path, tiny_model_dir))
    summary = rm.run(config, resume=True)
    assert summary.resumed_from_step == 10 and summary.steps == _final_validation(rm_reference)["step"]
    assert _final_validation(tmp_path) == _final_validation(rm_reference)


def test_a_killed_worker_recovers_from_the_sharded_checkpoint_to_the_uninterrupted_result(rm_reference, tmp_path,
                                                                                          tiny_model_dir):
    config = load_config(RM_CONFIG, overrides=_rm_overrides(tmp_path, tiny_model_dir, max_failures=1))
    marker = tmp_path / "killed"
    summary = rm.run(config, fault_injection={"after_step": 10, "marker": str(marker), "action": "kill"})
    assert marker.exists() and summary.steps == _final_validation(rm_reference)["step"]  # the worker really died once; Ray Train restarted the group
    assert _final_validation(tmp_path) == _final_validation(rm_reference)


def test_a_sharded_checkpoint_resumes_on_one_worker(rm_reference, tmp_path, tiny_model_dir):
    # the reference's next-to-last checkpoint, continued by one worker (in-process, unsharded): DCP reshards on load
    shutil.copytree(rm_reference / "run", tmp_path / "run")
    *_, middle, last = sorted((tmp_path / "run" / "rm_run").glob("checkpoint_0*"))
    shutil.rmtree(last)
    middle_step = json.loads((middle / "state.json").read_text())["step"]
    config = load_config(RM_CONFIG, overrides=_rm_overrides(tmp_path, tiny_model_dir, workers=1))
    summary = rm.run(config, resume=True)
    assert summary.resumed_from_step == middle_step and summary.steps > middle_step
    assert _final_validation(tmp_path)["accuracy"] >= 0.9


def test_a_ddp_checkpoint_resumes_under_fsdp_converted(rm_reference, tmp_path, tiny_model_dir):
    _kill_after_step_10(tmp_path, tiny_model_dir, "ddp")
    checkpoint = sorted((tmp_path / "run" / "rm_run").glob("checkpoint_0*"))[-1]
    assert json.loads((checkpoint / "state.json").read_text())["strategy"] == "ddp"
    result = runner.invoke(app, ["rm", "train", str(RM_CONFIG), *_rm_overrides(tmp_path, tiny_model_dir),
                                 "--resume"])
    assert result.exit_code == 0, result.output
    assert "training.strategy" in result.output  # the changed key is named when resuming
    final, reference = _final_validation(tmp_path), _final_validation(rm_reference)
    assert final["step"] == reference["step"] and final["accuracy"] >= 0.9
    assert final["loss"] == pytest.approx(reference["loss"], rel=0.05)  # the same run, up to reduction order


# ----------------------------------------------------------------------------------------------- PPO


def _ppo_config(tmp_path: Path, model_dir: Path, **extra):
    from tests.recipes.test_ppo import few_prompts, make_config

    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = few_prompts(tmp_path, 32)  # 16 per worker: 2 iterations of 8 per epoch
    # 17 held-out prompts: 9 and 8 per worker, i.e. 2 and 1 validation batches of 8; every worker must still run
    # the same number of (collective) gathers, or validation hangs
    validation_file = few_prompts(tmp_path, 17, source="heldout_prompts.jsonl")
    return make_config(tmp_path, model_dir, model_dir, train_file=prompts, validation_file=validation_file,
                       num_training_workers=2, epochs=2, save_every_steps=1, strategy="fsdp", **extra)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora-checkpointing"])
def test_ppo_under_fsdp_resumes_exactly_and_exports_policy_and_value_model(tmp_path, tiny_model_dir, ray_cluster,
                                                                           lora):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhfctl.training.launch import run_training
    from tests.recipes.test_ppo import without_timings

    extra = {"gradient_checkpointing": True, "lora": {"r": 4}} if lora else {}

    def config_for(folder: Path):
        return _ppo_config(folder, tiny_model_dir, **extra)

    full = ppo.run(config_for(tmp_path / "full"))
    assert full.steps == 4
    killed = config_for(tmp_path / "killed")
    with pytest.raises(RuntimeFailure):
        run_training(ppo.build_job(killed), fault_injection={"after_step": 2, "marker": str(tmp_path / "marker")})
    checkpoint = sorted((tmp_path / "killed" / "run" / "ppo_run").glob("checkpoint_0*"))[-1]
    assert json.loads((checkpoint / "state.json").read_text())["strategy"] == "fsdp"
    resumed = ppo.run(killed, resume=True)
    assert resumed.resumed_from_step == 2
    assert without_timings(resumed.final_metrics) == pytest.approx(without_timings(full.final_metrics), rel=1e-6,
                                                                   abs=1e-9)
    export = tmp_path / "full" / "export"
    policy = AutoModelForCausalLM.from_pretrained(export)
    with torch.no_grad():
        assert policy.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False).shape[1] == 6
    assert AutoModelForSequenceClassification.from_pretrained(export / "value_model").config.num_labels == 1


# ----------------------------------------------------------------------------------------------- DPO, GRPO


@pytest.mark.parametrize("stage", ["dpo", "grpo"])
def test_dpo_and_grpo_train_under_fsdp_and_export_a_plain_policy(tmp_path, tiny_model_dir, ray_cluster, stage):
    import torch
    from transformers import AutoModelForCausalLM

    from rlhfctl.recipes import dpo, grpo

    if stage == "dpo":
        from tests.recipes.test_dpo import few_pairs, make_config

        config = make_config(tmp_path, tiny_model_dir, train_file=few_pairs(tmp_path, 40), num_training_workers=2,
                             batch_size=4, strategy="fsdp")
        summary = dpo.run(config)
    else:
        from tests.recipes.test_grpo import few_prompts, make_config

        config = make_config(tmp_path, tiny_model_dir, train_file=few_prompts(tmp_path, 16), num_training_workers=2,
                             strategy="fsdp", experience_batch_size=4, batch_size=8)
        summary = grpo.run(config)
    assert summary.steps > 0
    checkpoint = sorted((tmp_path / "run" / f"{stage}_run").glob("checkpoint_0*"))[-1]
    assert json.loads((checkpoint / "state.json").read_text())["strategy"] == "fsdp"
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    with torch.no_grad():
        assert policy.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, do_sample=False).shape[1] == 5
