"""DPO: ``rlhfctl dpo train`` (1 worker x 2 CPUs) vs current TRL's DPOTrainer, same pairs, model and steps.

Both tools train one epoch over the same pairs from the same (random) kit model, with the same global batch (8
pairs per optimizer step), max length 128, AdamW, linear schedule without warm-up, clipping at 1.0, beta 0.1, the
sigmoid loss, and then measure the implicit-reward accuracy on the same 128 held-out pairs. TRL keeps its own
defaults otherwise: its reference model runs a forward every step (``precompute_ref_log_probs`` off);
rlhfctl computes the reference log-probs once per pair before training (the policy itself, before any update).
Runs alternate rlhfctl / TRL so machine drift affects both alike.
"""

from __future__ import annotations

from pathlib import Path

from benchlib import stats, workspace
from benchlib.sections import SectionResult, compare_rows, samples_of
from benchlib.sections.rm import train_subset
from benchlib.stats import Row
from benchlib.tools import TRL_CURRENT_DIR, BenchContext, ToolRun, rlhfctl_available, run_rlhfctl_train, run_trl_script

GLOBAL_BATCH = 8
MAX_LENGTH = 128
LEARNING_RATE = 1e-4
BETA = 0.1
MFU_NOTE = ("vs fp32 matmul peak at 2 threads; nominal FLOPs = TRL's work per pair (policy forward + backward and a "
            "reference forward over both full sequences): rlhfctl scores the reference once and the shared prompt "
            "once, so its figure can pass 100 %")


def dpo_config(model_dir: Path, train_file: Path, validation_file: Path) -> dict:
    """An rlhfctl DPO config (output folders are filled in per run)."""
    return {
        "stage": "dpo",
        "general": {"base_model": str(model_dir), "seed": 0},
        "dataset": {"train_file": str(train_file), "validation_file": str(validation_file),
                    "max_length": MAX_LENGTH},
        "training": {
            "optimizer": "AdamW", "batch_size": GLOBAL_BATCH, "epochs": 1, "learning_rate": LEARNING_RATE,
            "lr_scheduler": "linear", "warmup_ratio": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0,
            "beta": BETA, "loss_type": "sigmoid", "num_training_workers": 1, "resources_per_worker": {"CPU": 2.0},
            "mixed_precision": "no", "save_every_steps": 0,
        },
    }


def heldout_accuracy(run: ToolRun) -> float | None:
    """The implicit-reward accuracy on the held-out pairs at the end of the run."""
    if not run.ok:
        return None
    if run.tool == "trl":
        return run.extra.get("heldout_reward_accuracy")
    validation = run.extra.get("validation") or []
    return validation[-1].get("rewards/accuracies") if validation else None


def run(ctx: BenchContext) -> SectionResult:
    result = SectionResult("dpo")
    sizes = [("tiny", 512, ctx.repeats), ("small", 64 if ctx.quick else 256, ctx.repeats)]
    available, reason = rlhfctl_available("dpo", "train")
    for preset, pairs, repeats in sizes:
        model_dir = ctx.models[preset]
        train_file = train_subset(ctx, pairs)
        tokens_per_pair, too_long = workspace.rm_tokens_per_pair(model_dir, train_file, MAX_LENGTH)
        params = workspace.count_parameters(model_dir)
        # nominal: the policy's forward + backward over both sequences, and the reference's forward over them
        flops_per_pair = (stats.training_flops(params.causal_lm_flop_params, tokens_per_pair)
                          + stats.forward_flops(params.causal_lm_flop_params, tokens_per_pair))
        mine: list[ToolRun] = []
        theirs: list[ToolRun] = []
        trl_args = ["--model", str(model_dir), "--train", str(train_file), "--validation",
                    str(ctx.data.rm_validation), "--batch-size", str(GLOBAL_BATCH), "--max-length", str(MAX_LENGTH),
                    "--learning-rate", str(LEARNING_RATE), "--beta", str(BETA), "--threads", "2"]
        for _ in range(repeats):  # A B A B
            if available:
                mine.append(run_rlhfctl_train(ctx, "dpo", f"dpo-{preset}-rlhfctl-1w",
                                              dpo_config(model_dir, train_file, ctx.data.rm_validation),
                                              items_per_step=GLOBAL_BATCH))
            else:
                mine.append(ToolRun("rlhfctl", "1 worker x 2 CPU", None, error=reason))
            theirs.append(run_trl_script(ctx, "trl_dpo.py", f"dpo-{preset}-trl", trl_args, trl_dir=TRL_CURRENT_DIR))
        note = (f"{preset} ({params.total / 1e6:.2f} M params), {pairs} pairs, batch {GLOBAL_BATCH}, max len "
                f"{MAX_LENGTH}, current TRL DPOTrainer")
        if too_long:
            note += f", {too_long} sequences over max length"
        section = f"DPO {preset}"
        result.rows.extend(compare_rows(section, "1 worker x 2 CPU", mine, theirs, unit="pairs/s",
                                        rate_figure="steady-state pairs/s", flops_per_item=flops_per_pair,
                                        peak_flops=ctx.peak_flops(2), note=note, mfu_note=MFU_NOTE))
        result.rows.append(Row(section, "held-out implicit-reward accuracy", "fraction",
                               stats.median(heldout_accuracy(r) for r in mine),
                               stats.median(heldout_accuracy(r) for r in theirs),
                               f"{ctx.data.rm_validation.name}: 128 pairs, after the same {pairs // GLOBAL_BATCH} "
                               "steps", samples={"rlhfctl": [heldout_accuracy(r) for r in mine if r.ok],
                                                 "trl": [heldout_accuracy(r) for r in theirs if r.ok]}))
        result.details[preset] = {
            "pairs": pairs, "tokens_per_pair": tokens_per_pair, "parameters": params.total,
            "flops_per_pair": flops_per_pair,
            "rlhfctl": [r.summary() | {"heldout_accuracy": heldout_accuracy(r)} for r in mine],
            "trl": [r.summary() | {"heldout_accuracy": heldout_accuracy(r)} for r in theirs],
            "rate_samples": {"rlhfctl": samples_of(mine, "steady_rate"), "trl": samples_of(theirs, "steady_rate")},
        }
    return result
