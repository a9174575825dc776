"""Synthetic run folders, written the way the driver writes them (no training, no Ray): fast report tests."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest

T0 = 1_800_000_000.0  # Unix seconds of a synthetic run's step 0
SECONDS_PER_STEP = 0.5

PPO_CONFIG = """stage = "ppo"

[general]
output_dir = "{output_dir}"
checkpoint_dir = "{output_dir}-model"
seed = 0
model_name = "tiny"

[training]
learning_rate = {learning_rate}
kl_coeff = 0.05
batch_size = 16

[generation]
max_new_tokens = 32
"""

RM_CONFIG = """stage = "rm"

[general]
base_model = "tiny"
output_dir = "{output_dir}"
checkpoint_dir = "{output_dir}-model"

[training]
learning_rate = {learning_rate}
batch_size = 16
"""


def ppo_train_metrics(step: int, *, kl_scale: float = 0.1) -> dict[str, float]:
    return {"score_mean": 0.2 + 0.05 * step, "raw_score_mean": 0.2 + 0.05 * step, "kl_k1": kl_scale * step,
            "entropy": 3.0 - 0.01 * step, "response_length_mean": 18 + (step % 5), "policy_loss": -0.01,
            "value_loss": 2.0 / step, "explained_variance": 0.1 + 0.01 * step, "learning_rate": 1e-4,
            "episodes_per_s": 60.0 + (step % 3), "policy_clip_fraction": 0.05}


def rm_train_metrics(step: int) -> dict[str, float]:
    return {"loss": 0.7 * math.exp(-step / 10), "accuracy": min(1.0, 0.5 + step / 40), "margin": step / 10,
            "chosen_reward_mean": step / 20, "rejected_reward_mean": -step / 20, "grad_norm": 1.0, "lr": 1e-3}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def write_checkpoint_folder(run_folder: Path, stage: str, step: int) -> Path:
    """A complete (empty) checkpoint whose state.json was written when the synthetic step was."""
    folder = run_folder / f"{stage}_run" / f"checkpoint_{step:08d}"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"step": step, "files": {}}), encoding="utf-8")
    written = T0 + step * SECONDS_PER_STEP + 0.2
    os.utime(folder / "state.json", (written, written))
    return folder


def build_run(folder: Path, *, stage: str = "ppo", steps: int = 30, validation_every: int = 10,
              samples_every: int = 5, events: bool = True, finished: bool = True, learning_rate: float = 1e-4,
              kl_scale: float = 0.1, checkpoint_every: int = 10) -> Path:
    """A run folder as the driver leaves it: metrics.jsonl, samples.jsonl, events.jsonl, resolved_config.toml."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics: list[dict] = []
    samples: list[dict] = []
    for step in range(1, steps + 1):
        values = ppo_train_metrics(step, kl_scale=kl_scale) if stage == "ppo" else rm_train_metrics(step)
        metrics.append({"step": step, "epoch": 0, "split": "train", "time": T0 + step * SECONDS_PER_STEP, **values})
        if step % validation_every == 0:
            held_out = ({"score_mean": 0.1 + 0.04 * step, "kl_k1": 0.8 * kl_scale * step}
                        if stage == "ppo" else {"loss": 0.5 * math.exp(-step / 10), "accuracy": 0.9})
            metrics.append({"step": step, "epoch": 0, "split": "validation",
                            "time": T0 + step * SECONDS_PER_STEP + 0.1, **held_out})
        if stage == "ppo" and step % samples_every == 0:
            samples += [{"step": step, "prompt": f"\n\nHuman: question {row}?\n\nAssistant:",
                         "response": f"answer {row} at step {step}", "score": 0.1 * step + row} for row in range(3)]
    write_jsonl(folder / "metrics.jsonl", metrics)
    write_jsonl(folder / "samples.jsonl", samples)
    template = PPO_CONFIG if stage == "ppo" else RM_CONFIG
    (folder / "resolved_config.toml").write_text(template.format(output_dir=folder, learning_rate=learning_rate),
                                                 encoding="utf-8")
    timeline = [{"time": T0, "kind": "start", "stage": stage, "world_size": 2, "start_step": 0,
                 "total_steps": steps, "samples_per_step": 16}]
    for step in range(checkpoint_every, steps + 1, checkpoint_every):
        write_checkpoint_folder(folder, stage, step)
        timeline.append({"time": T0 + step * SECONDS_PER_STEP + 0.2, "kind": "checkpoint", "step": step,
                         "path": str(folder / f"{stage}_run" / f"checkpoint_{step:08d}")})
    if finished:
        timeline.append({"time": T0 + steps * SECONDS_PER_STEP + 1, "kind": "finish", "step": steps,
                         "final_metrics": {"loss": 0.1}})
    if events:
        write_jsonl(folder / "events.jsonl", timeline)
    return folder


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    """``make_run("name", stage="ppo", ...)``: a synthetic run folder under the test's tmp_path."""

    def make(name: str = "ppo", **options) -> Path:
        return build_run(tmp_path / name, **options)

    return make
