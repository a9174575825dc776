"""A stage stand-in for the core's tests (health checks, trackers): a toy loop with the recipes' shape that logs
a scheduled KL and, on chosen steps, sampled text; ``make_job`` wraps it in a one- or two-worker TrainingJob."""

from __future__ import annotations

import json
from dataclasses import dataclass

from rlhfctl.config.schema import RMConfig
from rlhfctl.training.job import TrainingJob
from rlhfctl.training.worker import LoopConfig

LOOPING = "the cat sat on the mat " * 6  # a response that repeats its own 4-grams


@dataclass(frozen=True)
class SchedulePayload:
    """What the toy loop logs: a KL value per step (1-based), and on which steps rank 0 samples looping text."""

    kl_by_step: list[float]
    looping_samples_at: tuple[int, ...] = ()


def schedule_loop(loop_config: LoopConfig) -> dict[str, float]:
    """A stage stand-in with the recipes' shape: step, bookkeeping, log, samples, checkpoint; validation and a save
    at each epoch end. The model is one weight trained towards 1 (so checkpoints hold real state)."""
    import torch

    from rlhfctl.training.checkpoint import TrainState
    from rlhfctl.training.optim import build_optimizer
    from rlhfctl.training.worker import setup_worker

    ctx = setup_worker(loop_config)
    model = ctx.prepare_model(torch.nn.Linear(1, 1, bias=False))
    optimizer = build_optimizer(model, ctx.training)
    state = TrainState(models={"m": model}, optimizers={"m": optimizer}, schedulers={})
    ctx.restore(state)
    per_epoch = ctx.total_steps // ctx.training.epochs
    for epoch in range(state.epoch, ctx.training.epochs):
        for batch_index in range(state.batch_in_epoch, per_epoch):
            loss = (model(torch.ones(1, 1)) - 1).pow(2).mean()
            ctx.backward(loss)
            ctx.step(optimizer, None, model)
            state.step, state.batch_in_epoch = state.step + 1, batch_index + 1
            kl = ctx.payload.kl_by_step[state.step - 1]
            ctx.log(state.step, ctx.all_reduce_mean({"loss": loss.item(), "kl_k1": kl}), epoch=epoch)
            if state.step in ctx.payload.looping_samples_at:
                text = LOOPING if ctx.rank == 0 else "a fine and varied answer"
                ctx.log_samples(state.step, [{"prompt": "p", "response": text}] * 4)
            if ctx.checkpoint_due(state.step) and state.batch_in_epoch < per_epoch:
                ctx.save(state)
        ctx.log(state.step, {"loss": 0.0}, epoch=epoch, split="validation")
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        ctx.save(state)
    return {"steps": float(state.step)}


def make_job(tmp_path, kl_by_step, *, monitor=None, looping_samples_at=(), workers=1, name="run",
             report_to=()) -> TrainingJob:
    config = RMConfig.model_validate({
        "general": {"base_model": "unused", "output_dir": str(tmp_path / name),
                    "checkpoint_dir": str(tmp_path / f"{name}-model"), "seed": 1, "report_to": list(report_to)},
        "dataset": {"train_file": str(tmp_path / "unused.jsonl")},
        "training": {"num_training_workers": workers, "epochs": 2, "learning_rate": 0.1, "optimizer": "SGD",
                     "save_every_steps": 0, "max_failures": 0},
        "monitor": {"kl_max": 5.0, "kl_patience": 2, **(monitor or {})},
    })
    return TrainingJob(stage="rm", config=config, train_loop=schedule_loop,
                       payload=SchedulePayload(list(kl_by_step), tuple(looping_samples_at)),
                       total_steps=len(kl_by_step), samples_per_step=1)


def events(tmp_path, name="run") -> list[dict]:
    return [json.loads(line) for line in (tmp_path / name / "events.jsonl").read_text().splitlines()]


def train_steps(tmp_path, name="run") -> list[int]:
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return [row["step"] for row in map(json.loads, lines) if row["split"] == "train"]
