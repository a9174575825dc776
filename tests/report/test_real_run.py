"""The report on files the real driver wrote: a one-worker in-process run (no Ray, no model), interrupted and
resumed, then reported as a page and as a terminal summary."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from rlhfctl.config.schema import RMConfig
from rlhfctl.errors import RuntimeFailure
from rlhfctl.report.html import render_html
from rlhfctl.report.run_data import load_runs
from rlhfctl.report.terminal import print_summary
from rlhfctl.report.timeline import timeline
from rlhfctl.training.job import TrainingJob
from rlhfctl.training.launch import run_training
from rlhfctl.training.worker import LoopConfig


def logging_loop(loop_config: LoopConfig) -> dict[str, float]:
    """Logs RM-like metrics and a few samples per step and checkpoints every 4 steps; trains nothing."""
    from rlhfctl.training.checkpoint import TrainState
    from rlhfctl.training.worker import setup_worker

    ctx = setup_worker(loop_config)
    state = TrainState()
    ctx.restore(state)
    for step in range(state.step + 1, ctx.total_steps + 1):
        state.step = step
        ctx.log(step, {"loss": 1.0 / step, "accuracy": min(1.0, 0.5 + step / 20), "lr": 1e-3}, epoch=0)
        ctx.log_samples(step, [{"prompt": "p", "response": f"reply {step}", "score": float(step)}])
        if step % 4 == 0:
            ctx.log(step, {"loss": 1.2 / step, "accuracy": 0.9}, epoch=0, split="validation")
            ctx.save(state)
    return {"loss": 1.0 / ctx.total_steps}


def job(tmp_path) -> TrainingJob:
    config = RMConfig.model_validate({
        "general": {"base_model": "unused", "output_dir": str(tmp_path / "run"),
                    "checkpoint_dir": str(tmp_path / "model")},
        "dataset": {"train_file": str(tmp_path / "unused.jsonl")},
        "training": {"num_training_workers": 1, "save_every_steps": 4},
    })
    return TrainingJob(stage="rm", config=config, train_loop=logging_loop, payload=None, total_steps=12,
                       samples_per_step=8)


def test_report_of_a_real_interrupted_and_resumed_run(tmp_path) -> None:
    with pytest.raises(RuntimeFailure):
        run_training(job(tmp_path), fault_injection={"after_step": 8, "marker": str(tmp_path / "marker"),
                                                     "action": "raise"})
    (run,) = load_runs([tmp_path / "run"])
    assert run.status().startswith("failed: rm training failed:") and run.last_step == 8

    run_training(job(tmp_path), resume=True)
    (run,) = load_runs([tmp_path / "run"])
    assert run.status() == "finished" and run.notes == []
    assert [row["step"] for row in run.train] == list(range(1, 13)) and len(run.samples) == 12
    kinds = [(entry.kind, entry.step) for entry in timeline(run)]
    assert kinds == [("start", 0), ("checkpoint", 4), ("checkpoint", 8), ("failure", 8), ("resume", 8),
                     ("checkpoint", 12), ("finish", 12)]
    page = render_html([run])
    assert "resumed from the checkpoint of step 8 on 1 worker(s)" in page and "reply 12" in page
    console = Console(file=io.StringIO(), width=120, color_system=None)
    print_summary([run], console)
    assert "stage rm · finished · step 12 of 12" in console.file.getvalue()
