"""The machine's limit: torch matmul GFLOP/s in fp32 and bf16 at 1 and 2 threads (each in its own process)."""

from __future__ import annotations

import json
import subprocess
import sys

from benchlib.sections import SectionResult
from benchlib.stats import Row
from benchlib.tools import BENCH_DIR, BenchContext

PROBE = BENCH_DIR / "benchlib" / "matmul_probe.py"


def measure(threads: int, dtype: str, size: int, min_seconds: float) -> dict | None:
    completed = subprocess.run([sys.executable, str(PROBE), "--threads", str(threads), "--dtype", dtype,
                                "--size", str(size), "--min-seconds", str(min_seconds)],
                               capture_output=True, text=True, timeout=300)
    if completed.returncode != 0:
        return None
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run(ctx: BenchContext) -> SectionResult:
    result = SectionResult("matmul")
    min_seconds = 1.0 if ctx.quick else 3.0
    for dtype in ("fp32", "bf16"):
        for threads in (1, 2):
            probe = measure(threads, dtype, 1024, min_seconds)
            if probe is None:
                result.rows.append(Row("machine", f"{dtype} matmul, {threads} thread(s)", "GFLOP/s", None, None,
                                       f"{dtype} matmul failed"))
                continue
            key = f"{dtype}@{threads}"
            ctx.peak_gflops[key] = max(ctx.peak_gflops.get(key, 0.0), probe["gflops_best"])
            result.rows.append(Row("machine", f"{dtype} matmul peak, {threads} thread(s)", "GFLOP/s",
                                   probe["gflops_best"], None,
                                   f"1024x1024, best of {probe['repeats']}; mean {probe['gflops_mean']:.0f}"))
            result.details[f"{dtype}@{threads}"] = probe
    return result


def reprobe_fp32_peak(ctx: BenchContext) -> None:
    """Re-measure the fp32 peak briefly and keep the best seen: a busy moment must not pass for the limit."""
    for threads in (1, 2):
        probe = measure(threads, "fp32", 1024, 0.5)
        if probe is not None:
            key = f"fp32@{threads}"
            ctx.peak_gflops[key] = max(ctx.peak_gflops.get(key, 0.0), probe["gflops_best"])
