"""Measure torch matmul GFLOP/s at a given thread count and dtype; prints one JSON object.

Run as its own process (``python matmul_probe.py --threads 1 --dtype fp32``) so the thread count is set before any
work happens and nothing else in the process competes.
"""

from __future__ import annotations

import argparse
import json
import time


def measure(threads: int, dtype_name: str, size: int, min_seconds: float) -> dict:
    import torch

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(dtype)
    right = torch.randn(size, size, generator=generator).to(dtype)
    torch.matmul(left, right)  # warm-up: first-call allocation and kernel selection
    flops_per_matmul = 2.0 * size**3
    best = 0.0
    repeats = 0
    start = time.perf_counter()
    while True:
        tick = time.perf_counter()
        torch.matmul(left, right)
        elapsed = time.perf_counter() - tick
        repeats += 1
        best = max(best, flops_per_matmul / elapsed)
        if time.perf_counter() - start >= min_seconds and repeats >= 3:
            break
    total = time.perf_counter() - start
    return {
        "threads": threads,
        "dtype": dtype_name,
        "size": size,
        "repeats": repeats,
        "gflops_best": best / 1e9,
        "gflops_mean": flops_per_matmul * repeats / total / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.threads, args.dtype, args.size, args.min_seconds)))


if __name__ == "__main__":
    main()
