"""The speed cost of rlhfctl's malloc policy (``rlhfctl/training/allocator.py``): the same runs with it and without.

    /work/wt/bin/quiet python benchmarks/bench_allocator.py                  # RM small + PPO tiny, A B A B
    /work/wt/bin/quiet python benchmarks/bench_allocator.py --variants default,131072,1048576,4194304
    python benchmarks/bench_allocator.py --only rm --repeats 1 --json out.json

Each workload runs with ``RLHFCTL_MALLOC=default`` (glibc's own behaviour) and with the policy (a fixed mmap
threshold, trims at phase boundaries), or with candidate thresholds (``--variants default,1048576``), alternating
so that machine drift affects all alike. The workloads
are ``run.py``'s: the RM section's small model (128 pairs, the default layout) and the PPO section's tiny model
(128 episodes); ``rm60m``: the RM on ``bench_memory.py``'s ~60 M-parameter Llama (48 pairs). Reports the steady rate (items/s after warm-up), wall time and the process tree's peak PSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import workspace  # noqa: E402
from benchlib.sections import ppo, rm  # noqa: E402
from benchlib.tools import BENCH_DIR, BenchContext, ToolRun, run_rlhfctl_train  # noqa: E402

GLIBC_SETTINGS = ("RLHFCTL_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def variant_environment(variant: str) -> tuple[str, dict[str, str]]:
    """(label, environment) of a variant: ``default`` (glibc's own behaviour), ``policy`` (rlhfctl's), or a number
    of bytes: glibc's threshold fixed there through its own environment settings (rlhfctl's policy then steps
    aside), to compare candidate thresholds without changing the code."""
    if variant == "default":
        return "glibc default", {"RLHFCTL_MALLOC": "default"}
    if variant == "policy":
        return "rlhfctl policy", {"RLHFCTL_MALLOC": "release"}
    threshold = int(variant)
    return f"mmap >= {threshold // 1024} KiB", {"MALLOC_MMAP_THRESHOLD_": str(threshold),
                                                 "MALLOC_TRIM_THRESHOLD_": str(2 * threshold)}


def workloads(ctx: BenchContext) -> dict:
    """name -> (stage, config, items per step)."""
    rm_pairs = rm.train_subset(ctx, 128)
    batch = rm.GLOBAL_BATCH // rm.default_layout().workers
    llama60m = BENCH_DIR / "results" / "work" / "memory" / "models" / "llama60m"  # bench_memory.py builds it
    return {
        "rm60m": ("rm", rm.rm_config(llama60m, rm.train_subset(ctx, 48), ctx.data.rm_validation, workers="auto",
                                     cpus_per_worker=None, batch_per_worker=batch), rm.GLOBAL_BATCH),
        "rm": ("rm", rm.rm_config(ctx.models["small"], rm_pairs, ctx.data.rm_validation, workers="auto",
                                  cpus_per_worker=None, batch_per_worker=batch), rm.GLOBAL_BATCH),
        "ppo": ("ppo", ppo.ppo_config(ctx.models["tiny"], ppo._prompt_subset(ctx, 128)), ppo.ROLLOUTS_PER_UPDATE),
    }


def run_variant(ctx: BenchContext, name: str, stage: str, config: dict, items: int, variant: str) -> ToolRun:
    previous = {key: os.environ.pop(key) for key in GLIBC_SETTINGS if key in os.environ}
    os.environ.update(variant_environment(variant)[1])  # the subprocess (and Ray's workers) inherit it
    try:
        return run_rlhfctl_train(ctx, stage, f"alloc-{name}-{variant}", config, items_per_step=items)
    finally:
        for key in GLIBC_SETTINGS:
            os.environ.pop(key, None)
        os.environ.update(previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="rm,ppo",
                        help="comma-separated workloads: rm, ppo, rm60m (bench_memory.py's ~60 M Llama, 48 pairs)")
    parser.add_argument("--variants", default="default,policy",
                        help="comma-separated: default, policy, or a fixed mmap threshold in bytes")
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant and workload (alternating)")
    parser.add_argument("--json", type=Path, help="write every run's summary here")
    parser.add_argument("--work-dir", type=Path, default=BENCH_DIR / "results" / "work")
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()
    data = workspace.write_data(work / "data", rm_pairs=2048)
    models = {preset: workspace.build_model(work / "models", preset, [data.rm_train, data.sft_train])
              for preset in ("tiny", "small")}
    ctx = BenchContext(quick=True, repeats=args.repeats, work=work, data=data, models=models,
                       invocation="allocator-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    chosen = {name: spec for name, spec in workloads(ctx).items() if name in args.only.split(",")}
    results: dict[str, dict[str, list[dict]]] = {}
    for name, (stage, config, items) in chosen.items():
        variants = args.variants.split(",")
        results[name] = {variant_environment(variant)[0]: [] for variant in variants}
        for _ in range(args.repeats):
            for variant in variants:
                label = variant_environment(variant)[0]
                run = run_variant(ctx, name, stage, config, items, variant)
                results[name][label].append(run.summary())
                rate = f"{run.steady_rate:.3f}/s" if run.steady_rate else f"- ({run.error or run.rate_note})"
                print(f"{name:4} {label:15} steady {rate:>10}  wall {run.wall_time_s or 0:6.1f} s  "
                      f"peak PSS {run.peak_pss_gb or 0:.3f} GB", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
