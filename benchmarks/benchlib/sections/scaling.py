"""Scaling: ``rlhfctl rm train`` on the small (~15-20 M) model with 1 worker x 1 CPU, then 2 workers x 1 CPU.

Weak scaling: each worker keeps a batch of 8 pairs, so 2 workers do twice the work per step; the figure is the
ratio of steady-state pairs/s (target >= 1.6x on 2 cores). MFU is against the fp32 matmul peak at 1 thread per
worker (the 1-thread peak for one worker, the 2-thread peak for two).
"""

from __future__ import annotations

from benchlib import stats, workspace
from benchlib.sections import SectionResult, first_error, median_of, samples_of
from benchlib.sections.rm import MAX_LENGTH, train_subset, rm_config
from benchlib.stats import Row
from benchlib.tools import BenchContext, ToolRun, rlhfctl_available, run_rlhfctl_train

BATCH_PER_WORKER = 8
# Throughput only (no memory figure here): sample the process tree's PSS rarely, so the sampler's CPU time does
# not come out of the 2-worker run alone (1 worker leaves a core free for it; 2 workers do not).
PSS_INTERVAL_S = 5.0


def run(ctx: BenchContext) -> SectionResult:
    result = SectionResult("scaling")
    model_dir = ctx.models["small"]
    pairs = 128 if ctx.quick else 512
    train_file = train_subset(ctx, pairs)
    tokens_per_pair, _ = workspace.rm_tokens_per_pair(model_dir, train_file, MAX_LENGTH)
    params = workspace.count_parameters(model_dir)
    flops_per_pair = stats.training_flops(params.scalar_head_flop_params, tokens_per_pair)
    available, reason = rlhfctl_available("rm", "train")
    runs: dict[int, list[ToolRun]] = {1: [], 2: []}
    for _ in range(ctx.repeats):  # 1 worker, 2 workers, 1 worker, ...: drift affects both alike
        for workers in (1, 2):
            if not available:
                runs[workers].append(ToolRun("rlhfctl", f"{workers} workers", None, error=reason))
                continue
            config = rm_config(model_dir, train_file, ctx.data.rm_validation, workers=workers,
                               cpus_per_worker=1.0, batch_per_worker=BATCH_PER_WORKER)
            runs[workers].append(run_rlhfctl_train(ctx, "rm", f"scaling-small-{workers}w", config,
                                                   items_per_step=BATCH_PER_WORKER * workers,
                                                   pss_interval_s=PSS_INTERVAL_S))
    one, two = median_of(runs[1], "steady_rate"), median_of(runs[2], "steady_rate")
    note = f"small ({params.total / 1e6:.1f} M params), {pairs} pairs, batch {BATCH_PER_WORKER} per worker"
    errors = "; ".join(filter(None, [first_error(runs[1]), first_error(runs[2])]))
    result.rows.extend([
        Row("scaling", "rm train pairs/s, 1 worker x 1 CPU", "pairs/s", one, None, "; ".join(filter(None, [note, errors])),
            samples={"rlhfctl": samples_of(runs[1], "steady_rate")}),
        Row("scaling", "rm train pairs/s, 2 workers x 1 CPU", "pairs/s", two, None, note,
            samples={"rlhfctl": samples_of(runs[2], "steady_rate")}),
        Row("scaling", "speed-up 1 -> 2 workers", "x", stats.ratio(two, one), None, "target >= 1.6"),
        Row("scaling", "MFU, 1 worker x 1 CPU", "%",
            stats.mfu(one * flops_per_pair, ctx.peak_flops(1)) if one else None, None,
            "vs fp32 matmul peak at 1 thread"),
        Row("scaling", "MFU, 2 workers x 1 CPU", "%",
            stats.mfu(two * flops_per_pair, ctx.peak_flops(2)) if two else None, None,
            "vs fp32 matmul peak at 2 threads"),
    ])
    result.details = {"pairs": pairs, "tokens_per_pair": tokens_per_pair,
                      "runs": {str(w): [r.summary() for r in rs] for w, rs in runs.items()}}
    return result
