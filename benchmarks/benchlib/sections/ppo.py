"""PPO: ``rlhfctl ppo train`` vs TRL 1.12.0's PPOTrainer, plus current TRL's RLOO (a different algorithm).

Same policy and reward model folder (the value model starts from the reward model in both), same prompts,
8 rollouts per update, 1 mini-batch, 4 PPO epochs, 32-token responses at temperature 0.7, kl coefficient 0.05.
One episode = one prompt's rollout. Figures: steady-state episodes/s, the per-update generate/score/train split,
end-to-end wall time, peak PSS, and nominal MFU (model FLOPs counted with the full response length).
"""

from __future__ import annotations

import json
from pathlib import Path

from benchlib import stats, workspace
from benchlib.sections import (SectionResult, compare_rows, default_layout, first_error, first_step_row, median_of,
                               samples_of)
from benchlib.stats import Row
from benchlib.tools import (TRL_CURRENT_DIR, BenchContext, ToolRun, rlhfctl_available, run_rlhfctl_train,
                            run_trl_script)

ROLLOUTS_PER_UPDATE = 8
PPO_EPOCHS = 4
RESPONSE_LENGTH = 32
TEMPERATURE = 0.7
KL_COEF = 0.05
LEARNING_RATE = 1e-6


def ppo_config(model_dir: Path, prompts: Path, *, workers: int | str = "auto", cpus_per_worker: float | None = None
               ) -> dict:
    """``workers="auto"`` (the templates' default layout) with ``resources_per_worker`` at its default."""
    resources = {} if cpus_per_worker is None else {"resources_per_worker": {"CPU": cpus_per_worker}}
    per_worker = ROLLOUTS_PER_UPDATE // (default_layout().workers if workers == "auto" else workers)
    return {
        "stage": "ppo",
        "general": {"model_name": str(model_dir), "rm_name": str(model_dir), "seed": 0},
        "dataset": {"train_file": str(prompts), "validation_split_percentage": 0.0, "max_length": 128},
        "training": {
            "optimizer": "AdamW", "batch_size": per_worker, "experience_batch_size": per_worker, "num_mini_batches": 1,
            "ppo_epochs": PPO_EPOCHS, "epochs": 1, "learning_rate": LEARNING_RATE, "kl_coeff": KL_COEF,
            "lr_scheduler": "linear", "max_grad_norm": 1.0, "num_training_workers": workers, **resources,
            "mixed_precision": "no", "save_every_steps": 0,
            "sample_every_steps": 0,
        },
        "generation": {"max_new_tokens": RESPONSE_LENGTH, "temperature": TEMPERATURE, "top_k": 0, "top_p": 1.0,
                       "do_sample": True},
    }


def _prompt_subset(ctx: BenchContext, episodes: int) -> Path:
    path = ctx.work / "data" / f"ppo_prompts_first_{episodes}.jsonl"
    if not path.exists():
        lines = ctx.data.ppo_prompts.read_text(encoding="utf-8").splitlines()[:episodes]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def flops_per_episode(model_dir: Path, prompts: Path) -> float:
    """Nominal model FLOPs of one episode: generate, score (reference, value, reward), PPO epochs on policy+value."""
    params = workspace.count_parameters(model_dir)
    texts = [json.loads(line)["prompt"] for line in prompts.read_text(encoding="utf-8").splitlines() if line]
    sequence = workspace.tokens_per_row(model_dir, texts, 10_000) - 1 + RESPONSE_LENGTH  # prompt + response
    policy, scalar = params.causal_lm_flop_params, params.scalar_head_flop_params
    generate = stats.forward_flops(policy, sequence)
    score = stats.forward_flops(policy, sequence) + 2 * stats.forward_flops(scalar, sequence)
    train = PPO_EPOCHS * stats.training_flops(policy + scalar, sequence)
    return generate + score + train


def run(ctx: BenchContext) -> SectionResult:
    result = SectionResult("ppo")
    sizes = [("tiny", 128 if ctx.quick else 256, ctx.repeats)]
    if not ctx.quick and not ctx.ppo_tiny_only:
        sizes.append(("small", 64, ctx.repeats))
    available, reason = rlhfctl_available("ppo", "train")
    label = default_layout().label
    for preset, episodes, repeats in sizes:
        model_dir = ctx.models[preset]
        prompts = _prompt_subset(ctx, episodes)
        common = ["--policy", str(model_dir), "--reward-model", str(model_dir), "--prompts", str(prompts),
                  "--episodes", str(episodes), "--response-length", str(RESPONSE_LENGTH),
                  "--temperature", str(TEMPERATURE), "--learning-rate", str(LEARNING_RATE)]
        mine: list[ToolRun] = []
        theirs: list[ToolRun] = []
        rloo: list[ToolRun] = []
        for _ in range(repeats):
            if available:
                mine.append(run_rlhfctl_train(ctx, "ppo", f"ppo-{preset}-rlhfctl-1w", ppo_config(model_dir, prompts),
                                              items_per_step=ROLLOUTS_PER_UPDATE))
            else:
                mine.append(ToolRun("rlhfctl", label, None, error=reason))
            theirs.append(run_trl_script(ctx, "trl_ppo.py", f"ppo-{preset}-trl", common + [
                "--rollouts-per-update", str(ROLLOUTS_PER_UPDATE), "--ppo-epochs", str(PPO_EPOCHS),
                "--kl-coef", str(KL_COEF)]))
            rloo.append(run_trl_script(ctx, "trl_rloo.py", f"rloo-{preset}-trl-current", common + [
                "--completions-per-step", str(ROLLOUTS_PER_UPDATE), "--beta", str(KL_COEF)],
                trl_dir=TRL_CURRENT_DIR))
        section = f"PPO {preset}"
        flops = flops_per_episode(model_dir, prompts)
        result.rows.extend(compare_rows(section, label, mine, theirs, unit="episodes/s",
                                        rate_figure="steady-state episodes/s", flops_per_item=flops,
                                        peak_flops=ctx.peak_flops(2),
                                        note=f"{preset}, {episodes} episodes, {ROLLOUTS_PER_UPDATE} rollouts/update, "
                                             f"{RESPONSE_LENGTH}-token responses, TRL 1.12.0 PPOTrainer"))
        result.rows.append(first_step_row(section, label, mine))
        for phase in ("generate", "score", "train"):
            result.rows.append(Row(section, f"{phase} time per update", "s",
                                   stats.median(r.phase_seconds.get(phase) for r in mine if r.ok),
                                   stats.median(r.phase_seconds.get(phase) for r in theirs if r.ok),
                                   "median over updates after the first", higher_is_better=False))
        result.rows.append(Row(section, "episodes/s vs current TRL RLOO (DIFFERENT algorithm)", "episodes/s",
                               median_of(mine, "steady_rate"), median_of(rloo, "steady_rate"),
                               "RLOO: no value model, 2 completions per prompt; context only"
                               + (f"; RLOO: {first_error(rloo)}" if first_error(rloo) else ""),
                               samples={"rlhfctl": samples_of(mine, "steady_rate"),
                                        "trl_rloo": samples_of(rloo, "steady_rate")}))
        result.details[preset] = {"episodes": episodes, "flops_per_episode": flops,
                                  "rlhfctl": [r.summary() for r in mine], "trl_ppo": [r.summary() for r in theirs],
                                  "trl_rloo": [r.summary() for r in rloo]}
    return result
