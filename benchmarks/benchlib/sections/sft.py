"""SFT: ``rlhfctl sft train`` (1 worker x 2 CPUs) vs TRL's SFTTrainer: tokens/s, wall time, peak PSS, MFU.

Same rows (instruction/response), batch 8, max length 128, one epoch, loss on the response only, no packing.
tokens/s = steady-state rows/s x mean real tokens per row (prompt + response + EOS, from the model's tokenizer),
the same conversion for both tools, so padding a tool computes on is not counted as useful work.
"""

from __future__ import annotations

import json

from benchlib import stats, workspace
from benchlib.sections import SectionResult, compare_rows
from benchlib.tools import BenchContext, ToolRun, rlhfctl_available, run_rlhfctl_train, run_trl_script

BATCH = 8
MAX_LENGTH = 128
LEARNING_RATE = 1e-4


def sft_config(model_dir, train_file, *, workers: int = 1, cpus_per_worker: float = 2.0) -> dict:
    return {
        "stage": "sft",
        "general": {"base_model": str(model_dir), "seed": 0},
        "dataset": {"train_file": str(train_file), "validation_split_percentage": 0.0, "max_length": MAX_LENGTH},
        "training": {
            "optimizer": "AdamW", "batch_size": BATCH // workers, "epochs": 1, "learning_rate": LEARNING_RATE,
            "lr_scheduler": "linear", "warmup_ratio": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0,
            "num_training_workers": workers, "resources_per_worker": {"CPU": cpus_per_worker},
            "mixed_precision": "no", "save_every_steps": 0, "completion_only_loss": True,
        },
    }


def run(ctx: BenchContext) -> SectionResult:
    result = SectionResult("sft")
    model_dir = ctx.models["tiny"]
    train_file = ctx.data.sft_train
    rows = [json.loads(line) for line in train_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    tokens_per_row = workspace.tokens_per_row(model_dir, [r["instruction"] + r["response"] for r in rows], MAX_LENGTH)
    params = workspace.count_parameters(model_dir)
    flops_per_row = stats.training_flops(params.causal_lm_flop_params, tokens_per_row)
    available, reason = rlhfctl_available("sft", "train")
    mine: list[ToolRun] = []
    theirs: list[ToolRun] = []
    for _ in range(ctx.repeats):
        if available:
            mine.append(run_rlhfctl_train(ctx, "sft", "sft-tiny-rlhfctl-1w", sft_config(model_dir, train_file),
                                          items_per_step=BATCH))
        else:
            mine.append(ToolRun("rlhfctl", "1 worker x 2 CPU", None, error=reason))
        theirs.append(run_trl_script(ctx, "trl_sft.py", "sft-tiny-trl", [
            "--model", str(model_dir), "--train", str(train_file), "--batch-size", str(BATCH),
            "--max-length", str(MAX_LENGTH), "--learning-rate", str(LEARNING_RATE)]))
    rows_out = compare_rows("SFT tiny", "1 worker x 2 CPU", mine, theirs, unit="rows/s",
                            rate_figure="steady-state rows/s", flops_per_item=flops_per_row,
                            peak_flops=ctx.peak_flops(2),
                            note=f"tiny, {len(rows)} rows, batch {BATCH}, max len {MAX_LENGTH}")
    rate = rows_out[0]
    rows_out.insert(1, stats.Row("SFT tiny", "steady-state tokens/s (1 worker x 2 CPU)", "tokens/s",
                                 rate.rlhfctl * tokens_per_row if rate.rlhfctl else None,
                                 rate.trl * tokens_per_row if rate.trl else None,
                                 f"rows/s x {tokens_per_row:.1f} real tokens per row"))
    result.rows.extend(rows_out)
    result.details["tiny"] = {"rows": len(rows), "tokens_per_row": tokens_per_row, "parameters": params.total,
                              "rlhfctl": [r.summary() for r in mine], "trl": [r.summary() for r in theirs]}
    return result
