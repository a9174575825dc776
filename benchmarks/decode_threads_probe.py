"""Does one intra-op thread decode faster than two? The decode loop and single ops, threads 1 vs 2 alternated.

    python benchmarks/decode_threads_probe.py [--calls 20] [--presets tiny,small] [--work-dir benchmarks/results/work]

Issue 17's profile of a steady GRPO step (branch ``grpo6``) put 36 % of the generate phase's samples in each
block's first layer norm and suggested the second OpenMP thread being woken for tiny per-token ops. This probe
checks it in one process, switching ``torch.set_num_threads`` between 1 and 2 before every call (A B, then B A):

- ops: a layer norm of 32 x 64 (a decode step of the tiny model, 8 prompts x 4 completions), a 64 -> 192 linear
  (``c_attn``'s shape) and both in a row, microseconds per op;
- decode: ``generate_responses`` on the harness's kit models (built by ``run.py`` in ``<work-dir>/models``), the
  first 8 prompts of ``<work-dir>/data/ppo_prompts.jsonl``, 32 tokens at temperature 0.7, the same seed for both
  thread counts; shapes 8 prompts x 4 completions (GRPO's step) and 8 x 1 (PPO's).

Prints one line per case and a JSON line with the medians and the ratio 1-thread / 2-thread (< 1: one thread is
faster). Run it under ``/work/wt/bin/quiet``: the effect is a few microseconds per op.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent


def _alternated(call, rounds: int, warmup: int) -> dict[int, float]:
    """Median seconds of ``call()`` at 1 and 2 threads, alternated A B / B A."""
    seconds: dict[int, list[float]] = {1: [], 2: []}
    for round_ in range(-warmup, rounds):
        for threads in (1, 2) if round_ % 2 == 0 else (2, 1):
            torch.set_num_threads(threads)
            started = time.perf_counter()
            call(max(round_, 0))
            if round_ >= 0:
                seconds[threads].append(time.perf_counter() - started)
    return {threads: statistics.median(values) for threads, values in seconds.items()}


def probe_ops(repeats: int = 20) -> dict:
    hidden = torch.randn(32, 1, 64)
    norm, linear = torch.nn.LayerNorm(64), torch.nn.Linear(64, 192)
    cases = {"layer_norm 32x64": lambda: norm(hidden), "linear 32x64->192": lambda: linear(hidden),
             "layer_norm then linear": lambda: linear(norm(hidden))}
    results = {}
    with torch.no_grad():
        for name, op in cases.items():
            def call(_seed, op=op):
                for _ in range(repeats):
                    op()
            medians = _alternated(call, 400, 20)
            results[name] = {f"{threads}t_us": round(1e6 * medians[threads] / repeats, 2) for threads in (1, 2)}
    return results


def probe_decode(work: Path, presets: list[str], calls: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfctl.models.generation import SamplingSettings, generate_responses, tokenize_prompts

    rows = (work / "data" / "ppo_prompts.jsonl").read_text(encoding="utf-8").splitlines()[:8]
    texts = [json.loads(row)["prompt"] for row in rows]
    results = {}
    for preset in presets:
        tokenizer = AutoTokenizer.from_pretrained(work / "models" / preset, padding_side="left")
        policy = AutoModelForCausalLM.from_pretrained(work / "models" / preset).eval()
        ids, mask = tokenize_prompts(texts, tokenizer, 96)
        sampling = SamplingSettings(32, 0.7, 0, 1.0, True, (tokenizer.eos_token_id,), tokenizer.pad_token_id)
        for repeats in (4, 1):
            def call(seed, policy=policy, ids=ids, mask=mask, sampling=sampling, repeats=repeats):
                torch.manual_seed(seed)
                generate_responses(policy, ids, mask, sampling, repeats=repeats)
            medians = _alternated(call, calls, 2)
            results[f"{preset} 8x{repeats}"] = {
                "1t_ms": round(1000 * medians[1], 2), "2t_ms": round(1000 * medians[2], 2),
                "ratio_1t_over_2t": round(medians[1] / medians[2], 3)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20, help="Decode calls per thread count and shape.")
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--work-dir", type=Path, default=BENCH_DIR / "results" / "work")
    args = parser.parse_args()
    results = {"ops": probe_ops(), "decode": probe_decode(args.work_dir, args.presets.split(","), args.calls)}
    for group in results.values():
        for name, figures in group.items():
            print(name, figures, flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
