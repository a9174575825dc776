"""Soak: short trainings back to back in one process must not leak memory, file descriptors, threads or processes.

Modest sizes so it runs in CI: one warm-up run (imports, caches, first allocations), then RUNS more runs of the
tiny RM on the single-process path, measuring after each.
"""

from __future__ import annotations

import gc
import os
import threading
import warnings

import pytest

RUNS = 4
RSS_GROWTH_LIMIT_MB = 20.0  # over all RUNS runs after the warm-up (measured: ~2 MB); leaked models are counted exactly
FD_GROWTH_LIMIT = 2


def _measure() -> dict[str, float]:
    import psutil

    import torch

    gc.collect()
    process = psutil.Process()
    with warnings.catch_warnings():  # isinstance() touches deprecated torch aliases among the live objects
        warnings.simplefilter("ignore")
        live_modules = sum(isinstance(thing, torch.nn.Module) for thing in gc.get_objects())
    return {"rss_mb": process.memory_info().rss / 2**20, "fds": process.num_fds(), "modules": live_modules,
            "threads": threading.active_count(), "children": len(process.children(recursive=True))}


@pytest.mark.slow
@pytest.mark.needs_model
@pytest.mark.timeout(240)
def test_back_to_back_trainings_do_not_leak(workspace):
    from rlhfctl.config import load_config
    from rlhfctl.recipes import rm

    def train(index: int):
        config = workspace.config_dict(
            general={"output_dir": str(workspace.root / f"run{index}"),
                     "checkpoint_dir": str(workspace.root / f"model{index}")},
            training={"save_every_steps": 2, "num_training_workers": 1},
        )
        summary = rm.run(load_config(workspace.write_config(config, name=f"soak{index}.toml")))
        assert summary.steps > 0
        return summary

    first = train(0)
    baseline = _measure()
    samples = []
    for index in range(1, RUNS + 1):
        summary = train(index)
        assert summary.final_metrics == first.final_metrics  # same seed, same result, run after run
        samples.append(_measure())
    print(f"\nsoak baseline {baseline}\nafter each run {samples}")
    last = samples[-1]
    assert last["rss_mb"] - baseline["rss_mb"] < RSS_GROWTH_LIMIT_MB, samples
    assert last["fds"] - baseline["fds"] <= FD_GROWTH_LIMIT, samples
    assert last["modules"] <= baseline["modules"], "models or optimizers of earlier runs are still alive"
    assert last["threads"] <= baseline["threads"], samples
    assert last["children"] <= baseline["children"], "processes were left running"
