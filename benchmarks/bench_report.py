"""Benchmark `rlhfctl report` on a synthetic 10,000-step PPO run: seconds to the HTML page (target < 5 s).

    python benchmarks/bench_report.py [--steps 10000] [--repeats 3] [--png] [--seed 0]

Writes a run folder the way the driver does (metrics.jsonl with PPO's 26 train metrics per step and a validation pass
every 100 steps, samples.jsonl with 4 rows every 10 steps, events.jsonl with a checkpoint every 500 steps and a
resume, resolved_config.toml), then times the whole command in a fresh process, start-up included:
`rlhfctl report RUN -o report.html` (the target), `rlhfctl report RUN` (the terminal summary) and, with --png,
`rlhfctl report RUN --png DIR`. Prints one JSON line with the median of the repeats and the page size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0 = 1_800_000_000.0
PPO_CONFIG = """stage = "ppo"

[general]
output_dir = "{folder}"
checkpoint_dir = "{folder}-model"
model_name = "tiny"

[training]
learning_rate = 2e-5
kl_coeff = 0.05

[generation]
max_new_tokens = 64
"""


def train_metrics(step: int, rng: random.Random) -> dict[str, float]:
    progress = step / 10_000
    noise = lambda scale: rng.gauss(0.0, scale)  # noqa: E731 - local shorthand
    score = 2.0 * (1 - math.exp(-4 * progress)) + noise(0.3)
    kl = 6.0 * progress + abs(noise(0.5))
    return {
        "score_mean": score, "raw_score_mean": score, "non_score_reward": -0.05 * kl, "kl_k1": kl,
        "kl_k3": 0.9 * kl, "explained_variance": 0.6 * (1 - math.exp(-10 * progress)) + noise(0.05),
        "response_length_mean": 30 + 10 * progress + noise(2), "eos_rate": 0.8 + noise(0.05),
        "time_generate_s": 0.5 + abs(noise(0.05)), "time_score_s": 0.05 + abs(noise(0.01)),
        "time_forward_s": 0.1 + abs(noise(0.01)), "time_train_s": 0.8 + abs(noise(0.05)),
        "policy_loss": noise(0.02), "value_loss": 1.0 * math.exp(-3 * progress) + abs(noise(0.05)),
        "entropy": 3.0 - progress + noise(0.05), "policy_clip_fraction": abs(noise(0.05)),
        "value_clip_fraction": abs(noise(0.05)), "approx_kl": abs(noise(0.005)), "ratio_mean": 1 + noise(0.002),
        "grad_norm_policy": abs(noise(1.0)), "grad_norm_value": abs(noise(1.0)), "score_std": 1 + abs(noise(0.1)),
        "kl_coef": 0.05, "learning_rate": 2e-5 * (1 - progress), "episodes": 64.0 * step,
        "episodes_per_s": 40 + noise(2),
    }


def write_run(folder: Path, steps: int, seed: int) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    events = [{"time": T0, "kind": "start", "stage": "ppo", "world_size": 2, "start_step": 0, "total_steps": steps,
               "samples_per_step": 64}]
    with open(folder / "metrics.jsonl", "w", encoding="utf-8") as metrics, \
            open(folder / "samples.jsonl", "w", encoding="utf-8") as samples:
        for step in range(1, steps + 1):
            now = T0 + 1.5 * step + (600 if step > steps // 2 else 0)  # a 10-minute restart half-way
            metrics.write(json.dumps({"step": step, "epoch": 0, "split": "train", "time": round(now, 4),
                                      **train_metrics(step, rng)}) + "\n")
            if step % 100 == 0:
                metrics.write(json.dumps({"step": step, "epoch": 0, "split": "validation", "time": now + 0.5,
                                          "score_mean": 1.5 * (1 - math.exp(-4 * step / steps)),
                                          "kl_k1": 5.0 * step / steps, "response_length_mean": 35.0,
                                          "eos_rate": 0.8}) + "\n")
            if step % 10 == 0:
                for row in range(4):
                    samples.write(json.dumps({"step": step, "prompt": f"\n\nHuman: question {row} of step {step}?"
                                              "\n\nAssistant:", "response": f"An answer of about twenty words "
                                              f"for question {row}, written at step {step}. " * 2,
                                              "score": rng.gauss(1.0, 1.0)}) + "\n")
            if step % 500 == 0:
                events.append({"time": now + 0.2, "kind": "checkpoint", "step": step,
                               "path": str(folder / "ppo_run" / f"checkpoint_{step:08d}")})
            if step == steps // 2:
                events.append({"time": now + 600, "kind": "start", "stage": "ppo", "world_size": 2,
                               "start_step": step, "total_steps": steps, "samples_per_step": 64})
    events.append({"time": T0 + 1.5 * steps + 601, "kind": "finish", "step": steps, "final_metrics": {}})
    (folder / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events), encoding="utf-8")
    (folder / "resolved_config.toml").write_text(PPO_CONFIG.format(folder=folder), encoding="utf-8")


def timed_command(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rlhfctl", "report", *args], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "COLUMNS": "120"})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--png", action="store_true", help="also time --png (matplotlib images)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as work_dir:
        work = Path(work_dir)
        run = work / "ppo"
        write_run(run, args.steps, args.seed)
        page = work / "report.html"
        html_s = [timed_command([str(run), "-o", str(page), "--force"]) for _ in range(args.repeats)]
        summary_s = [timed_command([str(run)]) for _ in range(args.repeats)]
        png_s = [timed_command([str(run), "--png", str(work / "png"), "--force"]) for _ in range(args.repeats)] \
            if args.png else []
        print(json.dumps({
            "benchmark": "rlhfctl report, synthetic PPO run",
            "steps": args.steps,
            "metrics_per_step": len(train_metrics(1, random.Random(0))),
            "metrics_mb": round((run / "metrics.jsonl").stat().st_size / 1e6, 1),
            "html_seconds_median": round(statistics.median(html_s), 2),
            "html_seconds": [round(value, 2) for value in html_s],
            "html_mb": round(page.stat().st_size / 1e6, 1),
            "terminal_summary_seconds_median": round(statistics.median(summary_s), 2),
            "png_seconds_median": round(statistics.median(png_s), 2) if png_s else None,
            "target_html_seconds": 5.0,
        }))


if __name__ == "__main__":
    main()
