"""Driver side on the single-process path: run-directory rules, metrics.jsonl, events, resume, failures."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest

from rlhfctl.config.schema import RMConfig
from rlhfctl.errors import RuntimeFailure, UserError
from rlhfctl.config.layout import MachineResources
from rlhfctl.progress.events import (
    Notice,
    PhaseStarted,
    RecordingSink,
    RunFinished,
    RunLayout,
    RunStarted,
    StepEvent,
)
from rlhfctl.training.job import TrainingJob
from rlhfctl.training.launch import prepare_job, run_stage, run_training
from rlhfctl.training.worker import LoopConfig


@dataclass(frozen=True)
class ToyPayload:
    inputs: list[list[float]]  # (rows, 2)


def toy_loop(loop_config: LoopConfig) -> dict[str, float]:
    """A linear regression trained with the core's pieces (stands in for a stage)."""
    import torch

    from rlhfctl.training.checkpoint import TrainState
    from rlhfctl.training.optim import build_optimizer, build_scheduler
    from rlhfctl.training.worker import setup_worker

    ctx = setup_worker(loop_config)
    inputs = torch.tensor(ctx.payload.inputs)  # (rows, 2)
    targets = inputs @ torch.tensor([2.0, -1.0])  # (rows,)
    model = ctx.prepare_model(torch.nn.Linear(2, 1))
    optimizer = build_optimizer(model, ctx.training)
    scheduler = build_scheduler(optimizer, ctx.training, ctx.total_steps)
    state = TrainState(models={"m": model}, optimizers={"m": optimizer}, schedulers={"m": scheduler})
    ctx.restore(state)
    per_epoch = ctx.total_steps // ctx.training.epochs
    loss = torch.tensor(0.0)
    for epoch in range(state.epoch, ctx.training.epochs):
        shard = ctx.shard(len(inputs), epoch)
        for batch_index in range(state.batch_in_epoch, per_epoch):
            rows = shard[batch_index::per_epoch]
            loss = (model(inputs[rows]).squeeze(-1) - targets[rows]).pow(2).mean()
            ctx.backward(loss)
            ctx.step(optimizer, scheduler, model)
            state.step, state.batch_in_epoch = state.step + 1, batch_index + 1
            ctx.log(state.step, ctx.all_reduce_mean({"loss": loss.item()}), epoch=epoch)
            if ctx.checkpoint_due(state.step):
                ctx.save(state)
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        ctx.log(state.step, {"loss": loss.item()}, epoch=epoch, split="validation")
        ctx.save(state)
    return {"loss": loss.item(), "weight0": model.weight[0, 0].item()}


def _job(tmp_path, name="run", **training) -> TrainingJob:
    config = RMConfig.model_validate({
        "general": {"base_model": "unused", "output_dir": str(tmp_path / name), "checkpoint_dir": str(tmp_path / f"{name}-model"),
                    "seed": 1},
        "dataset": {"train_file": str(tmp_path / "unused.jsonl")},
        "training": {"num_training_workers": 1, "epochs": 2, "learning_rate": 0.05, "save_every_steps": 3,
                     "optimizer": "SGD", **training},
    })
    inputs = [[float(i % 5), float(i % 3)] for i in range(24)]
    return TrainingJob(stage="rm", config=config, train_loop=toy_loop, payload=ToyPayload(inputs),
                       total_steps=8, samples_per_step=6)


def test_local_run_writes_metrics_resolved_config_and_sends_events(tmp_path):
    sink = RecordingSink()
    job = _job(tmp_path)
    assert job.mode == "local"
    summary = run_training(job, progress=sink)
    assert summary.steps == 8
    assert set(summary.final_metrics) == {"loss", "weight0"}
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in lines if row["split"] == "train"] == list(range(1, 9))
    assert [row["step"] for row in lines if row["split"] == "validation"] == [4, 8]
    assert set(lines[0]) == {"step", "epoch", "split", "time", "loss"}
    times = [row["time"] for row in lines]
    assert times == sorted(times) and times[-1] - times[0] < 60  # when each step was logged, in order
    assert (tmp_path / "run" / "resolved_config.toml").read_text().startswith('stage = "rm"')
    assert [event.name for event in sink.events if isinstance(event, PhaseStarted)] == [
        "starting the worker", "loading model"]  # before the first step: the display names what it waits for
    assert isinstance(sink.events[2], RunStarted) and isinstance(sink.events[-1], RunFinished)
    assert sum(isinstance(event, StepEvent) for event in sink.events) == 10
    assert summary.history == lines


def test_run_stage_resolves_auto_before_building_the_job_and_says_so(tmp_path):
    template = _job(tmp_path, num_training_workers="auto")
    built = []

    def build_job(config):
        built.append(config.training)
        return dataclasses.replace(template, config=config)

    machine = MachineResources(cpus=1, gpus=0)  # fits any machine the test runs on
    plan = prepare_job(build_job, template.config, machine).plan()
    assert (plan.mode, plan.workers, plan.layout) == (
        "local", 1, "1 worker x {1 CPU} in this process, no Ray start-up (auto: one machine, 1 CPU, no GPU)")
    sink = RecordingSink()
    assert run_stage(build_job, template.config, machine=machine, progress=sink).steps == 8
    assert [(training.num_training_workers, training.resources_per_worker) for training in built] == [
        (1, {"CPU": 1.0})] * 2
    assert isinstance(sink.events[0], RunLayout) and sink.events[0].description == plan.layout
    assert [event.name for event in sink.events if isinstance(event, PhaseStarted)] == [
        "reading data", "starting the worker", "loading model"]
    with pytest.raises(UserError, match="already holds a rm run"):  # refused before the data is read again
        run_stage(build_job, template.config, machine=machine)
    assert len(built) == 2


def test_fresh_run_refuses_an_earlier_run_unless_resume_or_force(tmp_path):
    run_training(_job(tmp_path))
    with pytest.raises(UserError, match="already holds a rm run") as error:
        run_training(_job(tmp_path))
    assert "--resume" in error.value.hint and "--force" in error.value.hint
    summary = run_training(_job(tmp_path), force=True)
    assert summary.steps == 8 and summary.resumed_from_step is None


def test_resume_with_nothing_to_resume_is_a_clear_error_and_auto_starts_fresh(tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        run_training(_job(tmp_path), resume=True)
    assert run_training(_job(tmp_path), resume="auto").steps == 8


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    reference = run_training(_job(tmp_path, "reference"))
    marker = tmp_path / "fault-marker"
    with pytest.raises(RuntimeFailure) as failure:
        run_training(_job(tmp_path, "interrupted"), fault_injection={"after_step": 6, "marker": str(marker),
                                                                     "action": "raise"})
    assert "checkpoint_00000006 (step 6)" in failure.value.message
    assert "rlhfctl rm train <config.toml> --resume" in failure.value.hint
    resumed = run_training(_job(tmp_path, "interrupted"), resume=True)
    assert resumed.resumed_from_step == 6
    assert resumed.steps == reference.steps
    assert resumed.final_metrics == reference.final_metrics  # bit-identical on CPU
    without_time = [[{k: v for k, v in row.items() if k != "time"} for row in run.history] for run in (resumed, reference)]
    assert without_time[0] == without_time[1]  # metrics.jsonl: replayed steps are not duplicated


def test_unwritable_output_dir_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    job = _job(tmp_path)
    job.config.general.output_dir = blocker / "out"
    with pytest.raises(UserError, match="cannot write"):
        run_training(job)


def test_resume_with_a_changed_config_says_which_keys_changed(tmp_path):
    run_training(_job(tmp_path))
    sink = RecordingSink()
    run_training(_job(tmp_path, learning_rate=0.01), resume=True, progress=sink)
    notices = [event for event in sink.events if isinstance(event, Notice)]
    assert len(notices) == 1
    assert "training.learning_rate" in notices[0].message and "new values are used" in notices[0].message


def _events(tmp_path, name="run") -> list[dict]:
    return [json.loads(line) for line in (tmp_path / name / "events.jsonl").read_text().splitlines()]


def test_events_jsonl_records_the_timeline_and_force_starts_it_over(tmp_path):
    run_training(_job(tmp_path))
    events = _events(tmp_path)
    assert [event["kind"] for event in events] == ["start", "checkpoint", "checkpoint", "checkpoint",
                                                   "checkpoint", "finish"]
    assert {key: events[0][key] for key in ("stage", "world_size", "start_step", "total_steps",
                                             "samples_per_step")} == {
        "stage": "rm", "world_size": 1, "start_step": 0, "total_steps": 8, "samples_per_step": 6}
    assert [event["step"] for event in events if event["kind"] == "checkpoint"] == [3, 4, 6, 8]
    assert events[-1]["step"] == 8 and set(events[-1]["final_metrics"]) == {"loss", "weight0"}
    times = [event["time"] for event in events]
    assert times == sorted(times)
    run_training(_job(tmp_path), force=True)
    assert [event["kind"] for event in _events(tmp_path)].count("start") == 1  # --force deleted the old timeline


def test_events_jsonl_keeps_a_failure_and_the_resume_after_it(tmp_path):
    with pytest.raises(RuntimeFailure):
        run_training(_job(tmp_path), fault_injection={"after_step": 6, "marker": str(tmp_path / "marker"),
                                                      "action": "raise"})
    failure = _events(tmp_path)[-1]
    assert failure["kind"] == "failure" and failure["step"] == 6
    assert failure["message"].startswith("rm training failed:") and "checkpoint_00000006 (step 6)" in failure["message"]
    run_training(_job(tmp_path, learning_rate=0.01), resume=True)
    kinds = [event["kind"] for event in _events(tmp_path)]
    assert kinds[kinds.index("failure"):] == ["failure", "notice", "start", "checkpoint", "finish"]
    resumed = _events(tmp_path)[-3]
    assert resumed["start_step"] == 6
    assert "training.learning_rate" in _events(tmp_path)[-4]["message"]
