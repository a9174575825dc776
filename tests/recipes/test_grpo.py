"""The GRPO stage: planning and bad input (exit 2 before any worker), learning from a verifiable reward, RLOO
without a reference model, exact resume and NaN handling in-process, and a 2-worker Ray run against the example
reward model that recovers exactly from a killed worker."""

from __future__ import annotations

import html
import io
import json
import math
import textwrap
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from rlhfctl.cli.app import app
from rlhfctl.config.schema import GRPOConfig
from rlhfctl.errors import ConfigError, DataError, RuntimeFailure
from rlhfctl.monitor.checks import ENTROPY_KEYS, KL_KEYS, RESPONSE_LENGTH_KEYS, REWARD_KEYS, first_present
from rlhfctl.recipes import grpo
from rlhfctl.report.html import render_html
from rlhfctl.report.run_data import load_runs
from rlhfctl.report.terminal import print_summary

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT / "examples" / "data"
TIMING_KEYS = ("time_", "episodes_per_s")
POLITE = [{"name": "contains", "text": "Hope that helps"}]
runner = CliRunner()


def make_config(tmp_path: Path, policy: Path, *, reward_model: Path | None = None, functions=POLITE,
                train_file: Path = DATA / "ppo.jsonl", validation_file: Path | None = DATA / "heldout_prompts.jsonl",
                **training) -> GRPOConfig:
    options = {"num_training_workers": 1, "experience_batch_size": 8, "num_generations": 4, "batch_size": 16,
               "learning_rate": 3e-4, "sample_every_steps": 2, "max_failures": 0, **training}
    general = {"output_dir": str(tmp_path / "run"), "checkpoint_dir": str(tmp_path / "export"), "seed": 3,
               "model_name": str(policy)}
    if reward_model is not None:
        general["rm_name"] = str(reward_model)
    dataset = {"train_file": str(train_file), "max_length": 64}
    if validation_file is not None:
        dataset["validation_file"] = str(validation_file)
    return GRPOConfig.model_validate({"general": general, "dataset": dataset, "training": options,
                                      "reward": {"functions": functions}, "generation": {"max_new_tokens": 32}})


def few_prompts(tmp_path: Path, count: int, **extra) -> Path:
    rows = [json.loads(line) for line in (DATA / "ppo.jsonl").read_text(encoding="utf-8").splitlines()[:count]]
    path = tmp_path / f"prompts_{count}.jsonl"
    path.write_text("".join(json.dumps({**row, **extra}) + "\n" for row in rows), encoding="utf-8")
    return path


def run_inline(config: GRPOConfig, run_dir: Path, *, resume_from: Path | None = None) -> dict:
    """The worker loop in this process (the core's local mode): no Ray, checkpoints in ``run_dir``."""
    from rlhfctl.training.worker import CoreSettings

    job = grpo.build_job(config)
    core = CoreSettings(stage="grpo", mode="local", run_dir=str(run_dir), checkpoint_dir=str(job.checkpoint_dir),
                        total_steps=job.total_steps, samples_per_step=job.samples_per_step,
                        resume_from=None if resume_from is None else str(resume_from), num_to_keep=100)
    return grpo.train_loop(job.loop_config(core))


def without_timings(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if not any(part in key for part in TIMING_KEYS)}


def write_toml(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- planning, bad input


def test_plan_counts_iterations_and_episodes(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir, reward_model=tiny_model_dir, num_training_workers=2, epochs=2,
                         rloo=True, scale_rewards=True)
    plan = grpo.plan(config)
    # 300 prompts / 2 workers = 150 each -> ceil(150 / 8) = 19 iterations per epoch; 8 prompts x 4 x 2 workers
    assert plan.stage == "grpo" and plan.steps_per_epoch == 19 and plan.total_steps == 38
    assert plan.samples_per_step == 64
    assert plan.notes["advantage"] == "leave-one-out (RLOO), divided by the group std"
    assert plan.notes["reward"] == f"reward model {tiny_model_dir} x 1; contains x 1"
    assert plan.notes["KL"] == "k3 to the initial policy, beta 0.04"
    # the default: every completion weighs the same (benchmarks/README.md: more gain per episode, less KL)
    assert plan.notes["loss"] == "clipped surrogate (epsilon 0.2), averaged per completion, then over completions"
    assert "random reward" in plan.notes["warning 1"]  # the kit model has no trained score head


@pytest.mark.parametrize(("beta", "reward_model", "roles"), [
    (0.04, True, ["policy", "reference", "reward_model"]),
    (0.0, True, ["policy", "reward_model"]),  # beta = 0 drops the reference model
    (0.04, False, ["policy", "reference"]),  # reward functions only
])
def test_the_memory_plan_knows_every_model_and_the_generation_cache(tmp_path, tiny_model_dir, beta, reward_model,
                                                                    roles):
    config = make_config(tmp_path, tiny_model_dir, reward_model=tiny_model_dir if reward_model else None, beta=beta)
    estimate = grpo.build_job(config).plan(memory_probe=None).memory.estimate
    assert list(estimate.per_model) == roles
    assert estimate.per_model["policy"].optimizer_state > 0
    assert all(estimate.per_model[role].optimizer_state == 0 for role in roles[1:])
    assert {"generation", "update", "validation"} <= set(estimate.phase_peaks)
    # only the reference needs a no-grad forward: the sampling policy's log-probs come from the decoder
    assert ("rollout forwards" in estimate.phase_peaks) == (beta > 0)
    several_passes = config.model_copy(update={"training": config.training.model_copy(update={"ppo_epochs": 2})})
    assert ("rollout forwards" in grpo.build_job(several_passes).plan(memory_probe=None).memory.estimate.phase_peaks
            ) == (beta > 0)
    config.training.num_generations = 8  # twice the completions: a larger KV cache while generating
    larger = grpo.build_job(config).plan(memory_probe=None).memory.estimate
    assert larger.phase_peaks["generation"] > estimate.phase_peaks["generation"]


def test_inconsistent_settings_are_refused_together(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir, experience_batch_size=6, num_mini_batches=4,
                         gradient_accumulation_steps=2)
    config.dataset.max_length = 16
    with pytest.raises(ConfigError) as caught:
        grpo.prepare(config)
    issues = {issue.key: issue.message for issue in caught.value.issues}
    assert set(issues) == {"training.num_mini_batches", "training.gradient_accumulation_steps", "dataset.max_length"}
    assert "whole groups of num_generations (4) completions" in issues["training.num_mini_batches"]


GRPO_TOML = """\
    stage = "grpo"
    [general]
    model_name = "{model}"
    output_dir = "{folder}/run"
    checkpoint_dir = "{folder}/export"
    [dataset]
    train_file = "{prompts}"
    max_length = 64
    [training]
    num_training_workers = 1
    num_generations = {generations}
    beta = {beta}
    [[reward.functions]]
    name = "contains"
    text = "Hope"
    [[reward.functions]]
    name = "{second}"
    field = "answer"
"""


@pytest.mark.parametrize(("settings", "problems"), [
    ({"generations": 1}, ["grpo.toml:11: training.num_generations: must be at least 2, found 1"]),
    ({"beta": -0.5}, ["grpo.toml:12: training.beta: must be at least 0.0, found -0.5"]),
    ({"second": "exact_mach"}, ["grpo.toml:16: reward.functions[1]: unknown name 'exact_mach'; expected one of "
                                "exact_match, contains, regex, length, python; did you mean 'exact_match'?"]),
])
def test_bad_settings_exit_2_naming_line_and_key(tmp_path, tiny_model_dir, settings, problems):
    values = {"model": tiny_model_dir, "folder": tmp_path, "prompts": few_prompts(tmp_path, 8, answer="4"),
              "generations": 4, "beta": 0.04, "second": "exact_match", **settings}
    path = write_toml(tmp_path / "grpo.toml", GRPO_TOML.format(**values))
    result = runner.invoke(app, ["grpo", "train", str(path)])
    assert result.exit_code == 2, result.output
    for problem in problems:
        assert problem in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_a_prompt_without_the_answer_exact_match_reads_exits_2(tmp_path, tiny_model_dir):
    prompts = few_prompts(tmp_path, 4, answer="4")
    lines = prompts.read_text(encoding="utf-8").splitlines()
    lines[2] = json.dumps({"prompt": "What is 2 + 2?"})
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    values = {"model": tiny_model_dir, "folder": tmp_path, "prompts": prompts, "generations": 4, "beta": 0.04,
              "second": "exact_match"}
    path = write_toml(tmp_path / "grpo.toml", GRPO_TOML.format(**values))
    result = runner.invoke(app, ["grpo", "train", str(path), "--dry-run"])
    assert result.exit_code == 2
    assert f"{prompts}:3: key 'answer': missing (reward.functions[1] (exact_match) reads it)" in result.stderr


def test_a_runaway_kl_stops_the_run_like_ppo(tmp_path, tiny_model_dir):
    """The [monitor] checks run on GRPO's metrics as on PPO's: a tiny beta and a high learning rate let the policy
    drift, the KL ceiling (per completion, kl_k1) stops the run at a checkpoint; exit 1 and the resume command."""
    prompts = few_prompts(tmp_path, 96)
    path = write_toml(tmp_path / "grpo.toml", f"""\
        stage = "grpo"
        [general]
        model_name = "{tiny_model_dir}"
        rm_name = "{tiny_model_dir}"
        output_dir = "{tmp_path}/run"
        checkpoint_dir = "{tmp_path}/export"
        [dataset]
        train_file = "{prompts}"
        validation_split_percentage = 0
        max_length = 64
        [training]
        num_training_workers = 1
        experience_batch_size = 4
        batch_size = 16
        beta = 0.001
        learning_rate = 1e-2
        ppo_epochs = 2
        sample_every_steps = 1
        [generation]
        max_new_tokens = 16
        [monitor]
        kl_max = 8
        kl_patience = 2
    """)
    result = runner.invoke(app, ["grpo", "train", str(path), "general.report_to=[]", "--quiet"])
    assert result.exit_code == 1, result.output
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    (alarm,) = [event for event in events if event["kind"] == "health" and event["action"] == "stop"]
    step = alarm["step"]
    assert (alarm["check"], alarm["split"]) == ("kl_ceiling", "train") and alarm["value"] > 8
    output = " ".join(result.output.split())
    assert f"grpo training stopped by the kl_ceiling health check at step {step}: KL from the reference policy " \
           "(kl_k1)" in output
    assert "--resume" in output and (tmp_path / "run" / "grpo_run" / f"checkpoint_{step:08d}").is_dir()
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {row["step"] for row in samples} == set(range(1, step + 1))  # the n-gram check reads these


def test_a_config_needs_some_reward(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="GRPO needs a reward"):
        make_config(tmp_path, tiny_model_dir, functions=[])


def test_user_reward_functions_must_be_installed_and_marked(tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""\
        from rlhfctl.objectives.rewards import reward_function

        @reward_function
        def short(prompt, response, row):
            return 1.0 if len(response) < 40 else 0.0

        def unmarked(prompt, response, row):
            return 1.0
    """), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    prompts = few_prompts(tmp_path, 8)
    for reference, problem in (("my_rewards:unmarked", "is not marked as a reward function"),
                               ("my_rewards:missing", "has no 'missing'"),
                               ("not_installed_anywhere:short", "cannot import 'not_installed_anywhere'")):
        config = make_config(tmp_path, tiny_model_dir, train_file=prompts,
                             functions=[{"name": "python", "function": reference}])
        with pytest.raises(ConfigError, match=problem) as caught:
            grpo.prepare(config)
        assert caught.value.issues[0].key == "reward.functions[0].function"
    config = make_config(tmp_path, tiny_model_dir, train_file=prompts, validation_file=None, epochs=1,
                         functions=[{"name": "python", "function": "my_rewards:short", "weight": 2.0}])
    metrics = run_inline(config, tmp_path / "ckpt")
    assert 0.0 <= metrics["train_rewards/python"] <= 1.0
    assert metrics["train_reward_mean"] == pytest.approx(2.0 * metrics["train_rewards/python"])


def test_exact_match_rows_keep_their_answer(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir, train_file=few_prompts(tmp_path, 8, answer=4), validation_file=None,
                         functions=[{"name": "exact_match", "extract": r"(\d+)"}])
    assert grpo.prepare(config).data.train[0]["answer"] == 4


# ----------------------------------------------------------------------------------------------- in-process runs


def test_grpo_raises_a_verifiable_reward_on_heldout_prompts(tmp_path, trained_models):
    sft_export, _ = trained_models
    summary = grpo.run(make_config(tmp_path, sft_export, train_file=few_prompts(tmp_path, 128)))
    metrics = summary.final_metrics
    before, after = metrics["validation_initial_reward_mean"], metrics["validation_reward_mean"]
    print(f"\nheld-out 'Hope that helps' rate {before:.3f} -> {after:.3f}")
    assert after > before + 0.2
    train = [line for line in summary.history if line["split"] == "train"]
    assert {"reward_mean", "reward_std", "reward_group_std", "zero_std_groups", "rewards/contains", "kl_k1",
            "kl_k3_per_token", "clip_fraction", "entropy", "response_length_mean", "eos_rate", "loss", "grad_norm", "learning_rate",
            "episodes", "episodes_per_s", "time_generate_s", "time_score_s", "time_train_s"} <= set(train[-1])
    assert train[-1]["episodes"] == 16 * 32  # 16 iterations of 8 prompts x 4 completions
    # the [monitor] checks find GRPO's figures under the names they read (KL per completion, as PPO's)
    found = {name: first_present(train[-1], keys)[0] for name, keys in
             (("kl", KL_KEYS), ("entropy", ENTROPY_KEYS), ("reward", REWARD_KEYS), ("length", RESPONSE_LENGTH_KEYS))}
    assert found == {"kl": "kl_k1", "entropy": "entropy", "reward": "reward_mean", "length": "response_length_mean"}
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {"prompt", "response", "reward", "contains"} <= set(samples[0])
    assert (tmp_path / "export" / "model.safetensors").is_file()

    # `rlhfctl report` on the run: the samples across training on the page, the metrics in the terminal summary
    (run,) = load_runs([tmp_path / "run"])
    page = render_html([run])
    assert "Samples across training" in page and html.escape(samples[-1]["response"]) in page
    console = Console(file=io.StringIO(), width=140, color_system=None)
    print_summary([run], console)
    assert "stage grpo · finished" in console.file.getvalue() and "reward_mean" in console.file.getvalue()


def test_rloo_without_a_reference_model(tmp_path, trained_models, monkeypatch):
    from rlhfctl.models import loading

    sft_export, rm_export = trained_models
    loads = []
    real_load = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda auto_class, *a, **k: loads.append(auto_class) or
                        real_load(auto_class, *a, **k))
    config = make_config(tmp_path, sft_export, reward_model=rm_export, train_file=few_prompts(tmp_path, 32),
                         rloo=True, beta=0.0, loss_aggregation="sequence", scale_rewards=False)
    metrics = run_inline(config, tmp_path / "ckpt")
    assert loads == ["AutoModelForCausalLM", "AutoModelForSequenceClassification"]  # policy and RM, no reference
    assert metrics["train_kl_k3_per_token"] == 0.0
    assert "train_kl_k1" not in metrics and "validation_kl_k1" not in metrics
    assert math.isfinite(metrics["train_loss"]) and "train_rewards/reward_model" in metrics


def test_lora_grpo_uses_the_adapter_free_policy_as_reference_and_learns(tmp_path, trained_models, monkeypatch):
    from rlhfctl.config.schema import LoraConfig
    from rlhfctl.models import loading

    sft_export, _ = trained_models
    loads: list[str] = []
    real_load = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda auto_class, *a, **k: loads.append(auto_class) or
                        real_load(auto_class, *a, **k))
    config = make_config(tmp_path, sft_export, train_file=few_prompts(tmp_path, 128), learning_rate=3e-3)
    config = config.model_copy(update={"lora": LoraConfig(r=8)})
    metrics = run_inline(config, tmp_path / "ckpt")
    assert loads == ["AutoModelForCausalLM"]  # the policy only: the reference is its base, adapters off
    before, after = metrics["validation_initial_reward_mean"], metrics["validation_reward_mean"]
    print(f"\nLoRA: held-out 'Hope that helps' rate {before:.3f} -> {after:.3f}, KL {metrics['validation_kl_k1']:.3f}")
    assert after > before + 0.1 and metrics["validation_kl_k1"] > 0.0
    assert (tmp_path / "export" / "model.safetensors").is_file()  # merged on export (the default)


def test_resume_from_a_middle_checkpoint_reproduces_the_uninterrupted_run(tmp_path, trained_models):
    from safetensors.torch import load_file

    sft_export, rm_export = trained_models
    options = {"train_file": few_prompts(tmp_path, 16), "validation_file": None, "epochs": 2, "save_every_steps": 1,
               "experience_batch_size": 4, "ppo_epochs": 2, "num_mini_batches": 2, "reward_model": rm_export}
    full = run_inline(make_config(tmp_path / "a", sft_export, **options), tmp_path / "a" / "ckpt")
    checkpoints = sorted((tmp_path / "a" / "ckpt").glob("checkpoint_*"))
    assert [path.name for path in checkpoints] == [f"checkpoint_{step:08d}" for step in range(1, 9)]
    middle = checkpoints[5]  # step 6: epoch 1, 2 of 4 iterations done
    assert json.loads((middle / "state.json").read_text())["batch_in_epoch"] == 2

    resumed = run_inline(make_config(tmp_path / "b", sft_export, **options), tmp_path / "b" / "ckpt",
                         resume_from=middle)
    assert without_timings(resumed) == without_timings(full)
    assert full["train_clip_fraction"] >= 0.0 and full["train_episodes"] == 8 * 16
    weights_full = load_file(str(tmp_path / "a" / "export" / "model.safetensors"))
    weights_resumed = load_file(str(tmp_path / "b" / "export" / "model.safetensors"))
    assert all((weights_full[name] == weights_resumed[name]).all() for name in weights_full)


def test_several_passes_take_the_old_logprobs_from_the_decoder_not_a_policy_forward(tmp_path, trained_models,
                                                                                  monkeypatch):
    from rlhfctl.recipes.grpo_trainer import GRPOTrainer

    sft_export, _ = trained_models
    forwards: list[str] = []
    real = GRPOTrainer._no_grad_logprobs
    monkeypatch.setattr(GRPOTrainer, "_no_grad_logprobs", lambda self, model, generation: forwards.append(
        "reference" if model is self.models.reference else "policy") or real(self, model, generation))
    config = make_config(tmp_path, sft_export, train_file=few_prompts(tmp_path, 16), validation_file=None,
                         ppo_epochs=2, num_mini_batches=2, experience_batch_size=4)
    metrics = run_inline(config, tmp_path / "ckpt")
    assert forwards == ["reference"] * 4  # 4 iterations: the reference's forward only, never the policy's
    # the first pass over the first mini-batch sees ratio 1 (the decoder's log-probs are the policy's), later ones
    # move away from it only as far as the clip allows
    assert 0.9 < metrics["train_ratio_mean"] < 1.1 and math.isfinite(metrics["train_loss"])


def test_groups_packed_behind_their_prompt_give_the_rows_run(tmp_path, trained_models, monkeypatch):
    """The reward model's scores, the reference's and the update's log-probs with each group's prompt computed once
    (``models.packing.pack_groups``): a seeded run's metrics are those of one row per completion, to fp32 rounding."""
    from rlhfctl.models import rollout

    sft_export, rm_export = trained_models
    options = {"train_file": few_prompts(tmp_path, 16), "validation_file": None, "experience_batch_size": 4,
               "ppo_epochs": 2, "num_mini_batches": 2, "batch_size": 8, "reward_model": rm_export}
    packed_forwards: list[int] = []
    real_pack = rollout.pack_groups
    monkeypatch.setattr(rollout, "pack_groups", lambda *args: packed_forwards.append(args[-1]) or real_pack(*args))
    packed = run_inline(make_config(tmp_path / "packed", sft_export, **options), tmp_path / "packed" / "ckpt")
    # per iteration: the reward model's, two reference chunks of 8 rows, 2 passes x 2 mini-batches of 8 rows
    assert packed_forwards == [4] * (4 * (1 + 2 + 4))
    monkeypatch.setattr(rollout, "packs_groups", lambda model: False)
    monkeypatch.setattr(rollout, "packing_supported", lambda model: False)
    rows = run_inline(make_config(tmp_path / "rows", sft_export, **options), tmp_path / "rows" / "ckpt")
    assert len(packed_forwards) == 4 * 7  # nothing packed the second time
    expected = without_timings(rows)
    assert without_timings(packed) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert expected["train_kl_k1"] > 0.0 and "train_rewards/reward_model" in expected


def test_nonfinite_loss_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    from rlhfctl.objectives import grpo as grpo_math

    config = make_config(tmp_path, tiny_model_dir, train_file=few_prompts(tmp_path, 16), validation_file=None,
                         save_every_steps=1)
    real_loss = grpo_math.grpo_loss
    calls = {"count": 0}

    def loss_turning_nan(*args, **kwargs):
        calls["count"] += 1
        result = real_loss(*args, **kwargs)
        # iteration 1 is fine (32 completions in 2 micro-batches of 16), iteration 2 diverges
        return result._replace(loss=result.loss * float("nan")) if calls["count"] > 2 else result

    monkeypatch.setattr(grpo_math, "grpo_loss", loss_turning_nan)
    with pytest.raises(RuntimeFailure, match="grpo training stopped at step 2: the loss is not finite"):
        run_inline(config, tmp_path / "ckpt")
    assert [path.name for path in (tmp_path / "ckpt").glob("checkpoint_*")] == ["checkpoint_00000001"]
    assert not (tmp_path / "export").exists()


def test_bad_prompt_rows_are_data_errors(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": ""}\n', encoding="utf-8")
    with pytest.raises(DataError, match="is empty") as caught:
        grpo.prepare(make_config(tmp_path, tiny_model_dir, train_file=prompts))
    assert caught.value.line == 2 and caught.value.key == "prompt"


# ----------------------------------------------------------------------------------------------- Ray end to end


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_grpo_on_two_ray_workers_raises_the_reward_models_score_and_recovers_exactly(tmp_path, trained_models,
                                                                                    ray_cluster):
    sft_export, rm_export = trained_models

    def config_for(folder: Path) -> GRPOConfig:
        config = make_config(folder, sft_export, reward_model=rm_export, functions=[], num_training_workers=2,
                             experience_batch_size=4, save_every_steps=10, max_failures=1)
        config.general.model_pretrain = sft_export
        return config

    summary = grpo.run(config_for(tmp_path / "full"))
    metrics = summary.final_metrics
    before, after = metrics["validation_initial_reward_mean"], metrics["validation_reward_mean"]
    print(f"\nheld-out RM score {before:.3f} -> {after:.3f}, KL(k1) {metrics['validation_kl_k1']:.2f} nats, "
          f"{metrics['train_episodes_per_s']:.1f} episodes/s")
    assert summary.steps == 38 and after - before > 1.0  # the RM's scores span about [-2.5, 2.5]
    assert 0.0 < metrics["validation_kl_k1"] < 25.0

    marker = tmp_path / "killed.marker"
    recovered = grpo.run(config_for(tmp_path / "killed"),
                         fault_injection={"after_step": 10, "marker": str(marker), "action": "kill"})
    assert marker.exists() and recovered.steps == 38
    assert without_timings(recovered.final_metrics) == pytest.approx(without_timings(metrics), rel=1e-6, abs=1e-9)
