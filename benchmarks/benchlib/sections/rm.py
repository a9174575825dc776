"""RM: ``rlhfctl rm train`` (1 worker x 2 CPUs, 2 workers x 1 CPU) vs TRL's RewardTrainer, same data and model.

Both tools train one epoch over the same pairs with the same global batch (8 pairs per optimizer step: 4 per
worker with 2 workers), max length 128, AdamW, linear schedule without warm-up, clipping at 1.0, and evaluate the
same validation file once at the end. Runs alternate rlhfctl / TRL so machine drift affects both alike.
"""

from __future__ import annotations

from pathlib import Path

from benchlib import stats, workspace
from benchlib.sections import SectionResult, compare_rows, default_layout, first_step_row
from benchlib.tools import BenchContext, ToolRun, rlhfctl_available, run_rlhfctl_train, run_trl_script

GLOBAL_BATCH = 8
MAX_LENGTH = 128
LEARNING_RATE = 1e-4


def rm_config(model_dir: Path, train_file: Path, validation_file: Path, *, workers: int | str,
              cpus_per_worker: float | None, batch_per_worker: int) -> dict:
    """An rlhfctl RM config (output folders are filled in per run); ``workers="auto"``: the templates' default
    layout, ``resources_per_worker`` left at its default."""
    resources = {} if cpus_per_worker is None else {"resources_per_worker": {"CPU": cpus_per_worker}}
    return {
        "stage": "rm",
        "general": {"base_model": str(model_dir), "seed": 0},
        "dataset": {"train_file": str(train_file), "validation_file": str(validation_file),
                    "max_length": MAX_LENGTH},
        "training": {
            "optimizer": "AdamW", "batch_size": batch_per_worker, "epochs": 1, "learning_rate": LEARNING_RATE,
            "lr_scheduler": "linear", "warmup_ratio": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0,
            "num_training_workers": workers, **resources, "mixed_precision": "no", "save_every_steps": 0,
        },
    }


def train_subset(ctx: BenchContext, pairs: int) -> Path:
    """The first ``pairs`` rows of the RM training file (so every size reads the same rows)."""
    path = ctx.work / "data" / f"rm_train_first_{pairs}.jsonl"
    if not path.exists():
        lines = ctx.data.rm_train.read_text(encoding="utf-8").splitlines()[:pairs]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(ctx: BenchContext) -> SectionResult:
    result = SectionResult("rm")
    sizes = [("tiny", 2048, ctx.repeats), ("small", 128 if ctx.quick else 512, ctx.repeats)]
    available, reason = rlhfctl_available("rm", "train")
    for preset, pairs, repeats in sizes:
        model_dir = ctx.models[preset]
        train_file = train_subset(ctx, pairs)
        tokens_per_pair, too_long = workspace.rm_tokens_per_pair(model_dir, train_file, MAX_LENGTH)
        params = workspace.count_parameters(model_dir)
        flops_per_pair = stats.training_flops(params.scalar_head_flop_params, tokens_per_pair)
        auto = default_layout()
        variants = [(auto.label, "auto", None)]  # the templates' default
        if preset == "tiny":
            variants.append(("2 workers x 1 CPU", 2, 1.0))
        mine: dict[str, list[ToolRun]] = {label: [] for label, _, _ in variants}
        theirs: list[ToolRun] = []
        trl_args = ["--model", str(model_dir), "--train", str(train_file), "--validation",
                    str(ctx.data.rm_validation), "--batch-size", str(GLOBAL_BATCH), "--max-length",
                    str(MAX_LENGTH), "--learning-rate", str(LEARNING_RATE)]
        for _ in range(repeats):
            for label, workers, cpus in variants:  # A B A B: each rlhfctl variant followed by a TRL run
                if available:
                    per_worker = GLOBAL_BATCH // (auto.workers if workers == "auto" else workers)
                    config = rm_config(model_dir, train_file, ctx.data.rm_validation, workers=workers,
                                       cpus_per_worker=cpus, batch_per_worker=per_worker)
                    mine[label].append(run_rlhfctl_train(ctx, "rm", f"rm-{preset}-rlhfctl-{workers}w", config,
                                                         items_per_step=GLOBAL_BATCH))
                else:
                    mine[label].append(ToolRun("rlhfctl", label, None, error=reason))
                theirs.append(run_trl_script(ctx, "trl_rm.py", f"rm-{preset}-trl", trl_args))
        note = f"{preset} ({params.total / 1e6:.2f} M params), {pairs} pairs, batch {GLOBAL_BATCH}, max len {MAX_LENGTH}"
        if too_long:
            note += f", {too_long} sequences over max length"
        for label, _, _ in variants:
            result.rows.extend(compare_rows(f"RM {preset}", label, mine[label], theirs, unit="pairs/s",
                                            rate_figure="steady-state pairs/s", flops_per_item=flops_per_pair,
                                            peak_flops=ctx.peak_flops(2), note=note))
            result.rows.append(first_step_row(f"RM {preset}", label, mine[label]))
        result.details[preset] = {
            "pairs": pairs, "tokens_per_pair": tokens_per_pair, "parameters": params.total,
            "flop_parameters": params.scalar_head_flop_params, "flops_per_pair": flops_per_pair,
            "rlhfctl": {label: [r.summary() for r in runs] for label, runs in mine.items()},
            "trl": [r.summary() for r in theirs],
        }
    return result
