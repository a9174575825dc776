"""What the health checks and the trackers cost a training run (issue 18), printed as one JSON line.

- ``agreement_us``: the all-reduce every ``ctx.log`` adds on several workers (two float64 flags, 2 gloo processes
  on this machine's CPU), mean per call;
- ``checks_us``: ``HealthMonitor.observe`` on one PPO-like step (26 metrics), mean over a 10,000-step run;
  ``sample_checks_us``: ``observe_samples`` on 4 sampled responses of ~40 words;
- ``<tracker>_open_s`` / ``<tracker>_ms_per_step``: opening each tracker in a fresh output folder and handing it
  one step of 26 metrics (the driver's poller thread does this; training does not wait for it), mean over
  ``--steps`` steps, closing included.

    python benchmarks/bench_health.py [--steps 500]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ["score_mean", "score_std", "raw_score_mean", "non_score_reward", "kl_k1", "kl_k3", "explained_variance",
           "response_length_mean", "eos_rate", "time_generate_s", "time_score_s", "time_forward_s", "time_train_s",
           "policy_loss", "value_loss", "entropy", "policy_clip_fraction", "value_clip_fraction", "approx_kl",
           "ratio_mean", "grad_norm_policy", "grad_norm_value", "kl_coef", "learning_rate", "episodes",
           "episodes_per_s"]


def _agreement_worker(rank: int, world: int, calls: int, port: int, results) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for _ in range(50):  # warm-up
        dist.all_reduce(torch.zeros(2, dtype=torch.float64))
    dist.barrier()
    started = time.perf_counter()
    for _ in range(calls):  # what WorkerContext.all_reduce_sum does with {"stop": 0.0, "broken": 0.0}
        values = torch.tensor([0.0, 0.0], dtype=torch.float64)
        dist.all_reduce(values)
        values.tolist()
    if rank == 0:
        results.put((time.perf_counter() - started) / calls)
    dist.destroy_process_group()


def agreement_us(calls: int = 2000) -> float:
    import torch.multiprocessing as mp

    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_agreement_worker, args=(2, calls, 29533, results), nprocs=2)
    return results.get() * 1e6


def checks_us(steps: int = 10_000) -> tuple[float, float]:
    from rlhfctl.monitor import HealthMonitor, HealthSettings

    rng = random.Random(0)
    monitor = HealthMonitor(HealthSettings(max_response_tokens=64))
    records = [{name: rng.random() for name in METRICS} for _ in range(steps)]
    started = time.perf_counter()
    for step, record in enumerate(records, 1):
        monitor.observe(step, "train", record)
    per_step = (time.perf_counter() - started) / steps
    words = "the cat sat on a mat and then it looked at the door for a while".split()
    rows = [{"prompt": "p", "response": " ".join(rng.choices(words, k=40))} for _ in range(4)]
    started = time.perf_counter()
    for step in range(1000):
        monitor.observe_samples(step, rows)
    return per_step * 1e6, (time.perf_counter() - started) / 1000 * 1e6


def tracker_costs(steps: int) -> dict[str, float]:
    from rlhfctl.training.trackers import REQUIREMENTS, TrackerRun, open_trackers

    for name in list(os.environ):
        if name.startswith(("WANDB_", "MLFLOW_")):
            del os.environ[name]
    rng = random.Random(0)
    found: dict[str, float] = {}
    for name, (module, _) in REQUIREMENTS.items():
        if importlib.util.find_spec(module) is None:
            continue
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as folder:
            started = time.perf_counter()
            (tracker,) = open_trackers([name], TrackerRun(Path(folder), "ppo", {"stage": "ppo"}, resuming=False))
            found[f"{name}_open_s"] = round(time.perf_counter() - started, 3)
            started = time.perf_counter()
            for step in range(1, steps + 1):
                tracker.log_metrics(step, "train", {metric: rng.random() for metric in METRICS})
            tracker.close(failed=False)
            found[f"{name}_ms_per_step"] = round((time.perf_counter() - started) / steps * 1000, 3)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="steps handed to each tracker")
    args = parser.parse_args()
    metric_checks, sample_checks = checks_us()
    print(json.dumps({"agreement_us": round(agreement_us(), 1), "checks_us": round(metric_checks, 1),
                      "sample_checks_us": round(sample_checks, 1), **tracker_costs(args.steps)}))


if __name__ == "__main__":
    main()
