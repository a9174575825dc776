"""The DPO stage: planning and bad input (exit 2 before any worker), learning, a separate reference, exact resume
in-process, the seed's Orca-style DPO sample through `data convert`, and a 2-worker Ray run that recovers exactly."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from rlhfctl.cli.app import app
from rlhfctl.config.schema import DPOConfig
from rlhfctl.recipes import dpo
from rlhfctl.report.html import render_html
from rlhfctl.report.run_data import load_runs
from rlhfctl.report.terminal import print_summary

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED_DATA = REPO_ROOT.parent / "shared" / "seed-data"  # the seed workflow's sample data, beside the repository
PAIRS = REPO_ROOT / "examples" / "data" / "rm.jsonl"
runner = CliRunner()


def make_config(tmp_path: Path, model: Path, *, train_file: Path = PAIRS, **training) -> DPOConfig:
    options = {"num_training_workers": 1, "batch_size": 16, "epochs": 1, "learning_rate": 1e-3, "max_failures": 0,
               **training}
    return DPOConfig.model_validate({
        "general": {"output_dir": str(tmp_path / "run"), "checkpoint_dir": str(tmp_path / "export"), "seed": 3,
                    "base_model": str(model)},
        "dataset": {"train_file": str(train_file), "max_length": 64, "validation_split_percentage": 10},
        "training": options,
    })


def few_pairs(tmp_path: Path, count: int) -> Path:
    lines = PAIRS.read_text(encoding="utf-8").splitlines()[:count]
    path = tmp_path / f"pairs_{count}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_inline(config: DPOConfig, run_dir: Path, *, resume_from: Path | None = None) -> dict:
    """The worker loop in this process (the core's local mode): no Ray, checkpoints in ``run_dir``."""
    from rlhfctl.training.worker import CoreSettings

    job = dpo.build_job(config)
    core = CoreSettings(stage="dpo", mode="local", run_dir=str(run_dir), checkpoint_dir=str(job.checkpoint_dir),
                        total_steps=job.total_steps, samples_per_step=job.samples_per_step,
                        resume_from=None if resume_from is None else str(resume_from), num_to_keep=100)
    return dpo.train_loop(job.loop_config(core))


def write_config(tmp_path: Path, model: Path, train_file: Path, **training) -> Path:
    import tomli_w

    data = {"stage": "dpo",
            "general": {"base_model": str(model), "output_dir": str(tmp_path / "run"),
                        "checkpoint_dir": str(tmp_path / "export")},
            "dataset": {"train_file": str(train_file), "max_length": 64},
            "training": {"num_training_workers": 1, **training}}
    path = tmp_path / "dpo.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- planning, bad input


def test_plan_counts_steps_and_names_the_reference(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir, num_training_workers=2, batch_size=8, epochs=2)
    plan = dpo.plan(config)
    assert plan.stage == "dpo" and plan.train_rows == 450 and plan.validation_rows == 50
    assert plan.steps_per_epoch == 29 and plan.total_steps == 58  # ceil(450 / (2 workers x 8)) per epoch
    assert "policy before training" in plan.notes["reference"] and "once per pair" in plan.notes["reference"]
    assert plan.notes["loss"] == "sigmoid, beta 0.1"
    other = make_config(tmp_path, tiny_model_dir, loss_type="sigmoid", label_smoothing=0.1)
    other.general.ref_model = str(tmp_path / "ref")
    assert dpo.plan(other).notes["reference"].startswith(str(tmp_path / "ref"))
    assert dpo.plan(other).notes["loss"] == "sigmoid, beta 0.1, label smoothing 0.1"


def test_the_memory_plan_holds_the_policy_alone_while_training(tmp_path, tiny_model_dir):
    """Reference log-probs are computed once before training: no resident reference model; a separate ref_model
    weighs in the pass that scores the pairs only."""
    config = make_config(tmp_path, tiny_model_dir)
    own = dpo.build_job(config).plan(memory_probe=None).memory.estimate
    assert list(own.per_model) == ["policy"]
    assert set(own.phase_peaks) == {"reference log-probs", "train step", "validation"}
    config.general.ref_model = str(tiny_model_dir)  # the same folder, named apart: loaded for one pass
    config.general.base_model = str(tiny_model_dir) + "/"
    separate = dpo.build_job(config).plan(memory_probe=None).memory.estimate
    assert list(separate.per_model) == ["policy", "reference"]
    weights = separate.per_model["reference"].weights
    assert separate.phase_peaks["reference log-probs"] == own.phase_peaks["reference log-probs"] + weights
    assert separate.phase_peaks["train step"] == own.phase_peaks["train step"]
    assert separate.peak_phase == "train step" and separate.breakdown.weights == own.breakdown.weights


def test_dry_run_through_the_cli(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir, PAIRS)
    result = runner.invoke(app, ["dpo", "train", str(config), "training.beta=0.2", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dpo" in result.output and "preference pairs" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("line", "problem"), [
    ({"instruction": "q", "chosen": "a"}, "key 'rejected': missing"),
    ({"instruction": "q", "chosen": "  ", "rejected": "b"}, "key 'chosen': is empty"),
    ({"chosen": "a", "rejected": "b"}, "key 'instruction': missing"),
])
def test_bad_pairs_exit_2_naming_file_line_and_key(tmp_path, tiny_model_dir, line, problem):
    pairs = tmp_path / "pairs.jsonl"
    good = {"instruction": "q", "chosen": "a", "rejected": "b"}
    pairs.write_text("\n".join(json.dumps(row) for row in (good, good, line)) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["dpo", "train", str(write_config(tmp_path, tiny_model_dir, pairs))])
    assert result.exit_code == 2, result.output
    assert f"{pairs}:3" in result.stderr and problem in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


@pytest.mark.parametrize(("override", "problem"), [
    ("training.beta=0", "training.beta: must be greater than 0"),
    ("training.beta=-0.1", "training.beta: must be greater than 0"),
    ("training.loss_type=IPO", "did you mean 'ipo'?"),
    ("training.label_smoothing=0.5", "training.label_smoothing: must be less than 0.5"),
])
def test_bad_settings_exit_2(tmp_path, tiny_model_dir, override, problem):
    result = runner.invoke(app, ["dpo", "train", str(write_config(tmp_path, tiny_model_dir, PAIRS)), override])
    assert result.exit_code == 2 and problem in result.stderr, result.output


def test_label_smoothing_is_only_for_the_sigmoid_loss(tmp_path, tiny_model_dir):
    path = write_config(tmp_path, tiny_model_dir, PAIRS, loss_type="ipo", label_smoothing=0.1)
    result = runner.invoke(app, ["validate-config", str(path)])
    assert result.exit_code == 2 and 'applies to loss_type = "sigmoid" only' in result.stderr


# ----------------------------------------------------------------------------------------------- in-process runs


def test_dpo_raises_heldout_implicit_reward_accuracy_and_exports_a_causal_lm(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    summary = dpo.run(make_config(tmp_path, tiny_model_dir))
    metrics = summary.final_metrics
    print(f"\nheld-out accuracy {metrics['validation_rewards/accuracies']:.3f}, "
          f"margin {metrics['validation_rewards/margins']:.3f}")
    # before training every implicit reward is 0 (accuracy 0; chance is 0.5): the pairs were learned
    assert metrics["validation_rewards/accuracies"] >= 0.9
    assert metrics["validation_rewards/margins"] > 0.5 and metrics["validation_loss"] < 0.5
    history = [line for line in summary.history if line["split"] == "train"]
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected", "grad_norm", "lr"} <= set(history[-1])
    assert history[-1]["rewards/accuracies"] > history[0]["rewards/accuracies"]
    validation = [line for line in summary.history if line["split"] == "validation"]
    assert set(validation[-1]) >= {"loss", "rewards/accuracies", "logps/chosen"}
    assert dpo.RECIPE.headline(metrics) == (f"held-out reward accuracy {metrics['validation_rewards/accuracies']:.3f}, "
                                            f"margin {metrics['validation_rewards/margins']:.3f}, "
                                            f"loss {metrics['validation_loss']:.3f}")
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    with torch.no_grad():
        assert policy(torch.tensor([[5, 6, 7]])).logits.shape[-1] >= 1

    # `rlhfctl report` on the run: the DPO metrics, train and validation, in the terminal summary and the page
    (run,) = load_runs([tmp_path / "run"])
    console = Console(file=io.StringIO(), width=140, color_system=None)
    print_summary([run], console)
    summary_text = console.file.getvalue()
    assert "stage dpo · finished" in summary_text
    for key in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "logps/rejected"):
        assert key in summary_text and key in render_html([run])


def test_a_separate_reference_model_gives_the_same_run(tmp_path, tiny_model_dir):
    """``ref_model`` is loaded, used once and freed; a copy of the policy must give exactly the default run."""
    pairs = few_pairs(tmp_path, 96)
    default = run_inline(make_config(tmp_path / "a", tiny_model_dir, train_file=pairs), tmp_path / "a" / "ckpt")
    copy = tmp_path / "reference-copy"
    shutil.copytree(tiny_model_dir, copy)
    config = make_config(tmp_path / "b", tiny_model_dir, train_file=pairs)
    config.general.ref_model = str(copy)
    assert not config.reference_is_policy
    separate = run_inline(config, tmp_path / "b" / "ckpt")
    assert separate == pytest.approx(default, rel=1e-6, abs=1e-7)


def test_reference_log_probs_are_computed_once_and_the_reference_is_freed_before_training(tmp_path, tiny_model_dir,
                                                                                           monkeypatch):
    import gc
    import weakref

    from rlhfctl.models import loading, pair_logprobs
    from rlhfctl.objectives import dpo as dpo_objective

    scored: list[int] = []  # pairs per call of the no-grad scoring pass
    real_all = pair_logprobs.all_pair_logprobs
    monkeypatch.setattr(pair_logprobs, "all_pair_logprobs",
                        lambda model, pairs, *a, **k: scored.append(len(pairs)) or real_all(model, pairs, *a, **k))
    loaded: list[weakref.ref] = []
    real_load = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: (lambda m: loaded.append(weakref.ref(m)) or m)(
        real_load(*a, **k)))
    reference_alive_in_training: list[bool] = []
    real_losses = dpo_objective.dpo_losses

    def losses(*args, **kwargs):
        if not reference_alive_in_training:
            gc.collect()
            reference_alive_in_training.append(loaded[1]() is not None)
        return real_losses(*args, **kwargs)

    monkeypatch.setattr(dpo_objective, "dpo_losses", losses)
    config = make_config(tmp_path, tiny_model_dir, train_file=few_pairs(tmp_path, 60), epochs=3)
    config.general.ref_model = str(tiny_model_dir) + "/"  # another source: loaded, used once, freed
    run_inline(config, tmp_path / "ckpt")
    assert len(loaded) == 2  # the policy, then the reference
    assert scored == [60, 6, 6, 6]  # every pair once by the reference, then the 6 held-out ones after each epoch
    assert reference_alive_in_training == [False]


def test_lora_dpo_learns_with_the_adapter_free_policy_as_reference_and_resumes_exactly(tmp_path, tiny_model_dir,
                                                                                     monkeypatch):
    """[lora]: one model loaded (the reference is the policy with its adapters off), only the adapters train, the
    checkpoints hold them alone and resume exactly, and the export is the adapter folder."""
    import json as json_module

    from safetensors.torch import load_file

    from rlhfctl.config.schema import LoraConfig
    from rlhfctl.models import adapters, loading

    loads: list[str] = []
    real_load = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda auto_class, *a, **k: loads.append(auto_class) or
                        real_load(auto_class, *a, **k))
    disabled: list[bool] = []
    real_disabled = adapters.adapters_disabled
    monkeypatch.setattr(adapters, "adapters_disabled", lambda model: disabled.append(adapters.has_adapters(model))
                        or real_disabled(model))
    options = {"train_file": few_pairs(tmp_path, 110), "epochs": 2, "save_every_steps": 2, "learning_rate": 1e-2}

    def config(folder):
        return make_config(folder, tiny_model_dir, **options).model_copy(
            update={"lora": LoraConfig(r=8, merge_on_export=False)})

    full = run_inline(config(tmp_path / "a"), tmp_path / "a" / "ckpt")
    assert loads == ["AutoModelForCausalLM"] and disabled == [True]  # one model; the reference pass without adapters
    assert full["validation_rewards/accuracies"] >= 0.8, full
    checkpoint = sorted((tmp_path / "a" / "ckpt").glob("checkpoint_*"))[1]
    assert all("lora_" in name for name in load_file(str(checkpoint / "model.policy.safetensors")))
    resumed = run_inline(config(tmp_path / "b"), tmp_path / "b" / "ckpt", resume_from=checkpoint)
    assert resumed == pytest.approx(full, rel=1e-6, abs=1e-7)
    adapter = json_module.loads((tmp_path / "a" / "export" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir)


@pytest.mark.parametrize("loss_type", ["ipo", "hinge"])
def test_other_loss_types_learn_too(tmp_path, tiny_model_dir, loss_type):
    metrics = run_inline(make_config(tmp_path, tiny_model_dir, train_file=few_pairs(tmp_path, 200),
                                     loss_type=loss_type, epochs=2), tmp_path / "ckpt")
    assert metrics["validation_rewards/accuracies"] >= 0.8, metrics


def test_resume_from_a_middle_checkpoint_reproduces_the_uninterrupted_run(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    pairs = few_pairs(tmp_path, 110)  # 99 train pairs: 7 micro-batches of 16 per epoch, 4 steps with accumulation 2
    options = {"train_file": pairs, "epochs": 2, "save_every_steps": 2, "gradient_accumulation_steps": 2}
    full = run_inline(make_config(tmp_path / "a", tiny_model_dir, **options), tmp_path / "a" / "ckpt")
    checkpoints = sorted((tmp_path / "a" / "ckpt").glob("checkpoint_*"))
    assert [path.name for path in checkpoints] == [f"checkpoint_{step:08d}" for step in (2, 4, 6, 8)]
    middle = checkpoints[2]  # step 6: epoch 1, 2 of 4 steps done
    assert json.loads((middle / "state.json").read_text())["epoch"] == 1

    resumed = run_inline(make_config(tmp_path / "b", tiny_model_dir, **options), tmp_path / "b" / "ckpt",
                         resume_from=middle)
    assert resumed == full
    weights_full = load_file(str(tmp_path / "a" / "export" / "model.safetensors"))
    weights_resumed = load_file(str(tmp_path / "b" / "export" / "model.safetensors"))
    assert all((weights_full[name] == weights_resumed[name]).all() for name in weights_full)


@pytest.mark.skipif(not (SEED_DATA / "sample_dpo_data.jsonl").is_file(), reason="seed data folder absent")
def test_the_seeds_orca_style_dpo_sample_trains_after_data_convert(tmp_path, tiny_model_dir):
    converted = tmp_path / "dpo.jsonl"
    result = runner.invoke(app, ["data", "convert", str(SEED_DATA / "sample_dpo_data.jsonl"), "--to", "rm",
                                 "-o", str(converted)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in converted.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 100 and {"instruction", "chosen", "rejected"} <= set(rows[0])
    config = make_config(tmp_path, tiny_model_dir, train_file=converted)
    config.dataset.max_length = 128  # long Orca answers: prompts are cut from the left
    metrics = run_inline(config, tmp_path / "ckpt")
    assert metrics["steps"] == 6 and 0.0 <= metrics["validation_rewards/accuracies"] <= 1.0


# ----------------------------------------------------------------------------------------------- Ray end to end


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dpo_on_two_ray_workers_learns_and_a_killed_worker_recovers_exactly(tmp_path, tiny_model_dir,
                                                                           ray_cluster):
    def overrides(folder: Path) -> list[str]:
        return [f"general.base_model={tiny_model_dir}", f"general.output_dir={folder / 'run'}",
                f"general.checkpoint_dir={folder / 'export'}", "training.learning_rate=1e-3",
                "training.save_every_steps=10", "training.max_failures=1",
                "training.num_training_workers=2", "training.batch_size=8"]  # the Ray path, asked for explicitly

    example = REPO_ROOT / "examples" / "configs" / "dpo.toml"  # 2 workers x 8 pairs: 29 steps
    result = runner.invoke(app, ["dpo", "train", str(example), *overrides(tmp_path / "full")])
    assert result.exit_code == 0, result.output
    assert "dpo: 2 worker(s) running, starting at step 0 of 29" in result.output

    def final_validation(folder: Path) -> dict:
        lines = (folder / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        last = [json.loads(line) for line in lines if '"validation"' in line][-1]
        return {key: value for key, value in last.items() if key != "time"}

    full = final_validation(tmp_path / "full")
    assert full["step"] == 29 and full["rewards/accuracies"] >= 0.9

    from rlhfctl.config import load_config

    config = load_config(example, overrides=overrides(tmp_path / "killed"))
    marker = tmp_path / "killed.marker"
    summary = dpo.run(config, fault_injection={"after_step": 10, "marker": str(marker), "action": "kill"})
    assert marker.exists() and summary.steps == 29
    recovered = final_validation(tmp_path / "killed")
    numbers = {key for key, value in full.items() if isinstance(value, (int, float))}  # pytest 9.2's approx: numbers only
    assert {key: recovered[key] for key in numbers} == pytest.approx({key: full[key] for key in numbers}, rel=1e-6,
                                                                     abs=1e-9)
    assert {key: value for key, value in recovered.items() if key not in numbers} == {
        key: value for key, value in full.items() if key not in numbers}
