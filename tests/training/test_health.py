"""Health checks during training (training/health.py through the core): alarms shown and recorded, a stop alarm
that saves a checkpoint and stops every worker, resume after a stop. In-process runs of a toy loop (fast); one
2-worker Ray run for the collective stop decision."""

from __future__ import annotations

import json

import pytest
from health_loop import LOOPING, events, make_job, train_steps

from rlhfctl.errors import RuntimeFailure
from rlhfctl.monitor import Alarm, HealthSettings
from rlhfctl.progress.events import HealthAlarm, RecordingSink
from rlhfctl.training.checkpoint import latest_checkpoint, read_step
from rlhfctl.training.health import WorkerHealth, settings_for
from rlhfctl.training.launch import run_training

HIGH_FROM_STEP_3 = [1.0, 1.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0]  # 2 epochs of 5 steps


# ----------------------------------------------------------------------------------------------- one worker


def test_a_stop_alarm_saves_a_checkpoint_where_it_fired_and_stops_with_the_resume_command(tmp_path):
    sink = RecordingSink()
    with pytest.raises(RuntimeFailure) as stopped:
        run_training(make_job(tmp_path, HIGH_FROM_STEP_3), progress=sink, config_path="rm.toml")
    failure = stopped.value
    assert failure.exit_code == 1
    assert failure.message.startswith("rm training stopped by the kl_ceiling health check at step 4: KL ")
    assert 'monitor.kl_action = "warn"' in failure.message
    assert "checkpoint_00000004 (step 4)" in failure.message
    assert failure.hint == "Continue with: rlhfctl rm train rm.toml --resume"
    assert read_step(latest_checkpoint(tmp_path / "run" / "rm_run")) == 4
    assert train_steps(tmp_path) == [1, 2, 3, 4]  # nothing trained after the stop point

    kinds = [event["kind"] for event in events(tmp_path)]
    assert kinds == ["start", "health", "checkpoint", "failure"]
    health = events(tmp_path)[1]
    assert {key: health[key] for key in ("check", "action", "step", "split", "value", "threshold")} == {
        "check": "kl_ceiling", "action": "stop", "step": 4, "split": "train", "value": 9.0, "threshold": 5.0}
    assert "stopped by the kl_ceiling health check" in events(tmp_path)[-1]["message"]
    alarms = [event.alarm for event in sink.events if isinstance(event, HealthAlarm)]
    assert [(alarm.check, alarm.step, alarm.action) for alarm in alarms] == [("kl_ceiling", 4, "stop")]
    assert not (tmp_path / "run-model").exists()  # a stopped run exports nothing


def test_a_stop_on_the_last_step_of_an_epoch_keeps_the_epoch_end_checkpoint(tmp_path):
    schedule = [1.0, 1.0, 1.0, 9.0, 9.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # fires at step 5, the first epoch's last
    with pytest.raises(RuntimeFailure, match="health check at step 5"):
        run_training(make_job(tmp_path, schedule))
    assert read_step(latest_checkpoint(tmp_path / "run" / "rm_run")) == 5
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(row["step"], row["split"]) for row in metrics][-2:] == [(5, "train"), (5, "validation")]


def test_a_nan_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path):
    """After a NaN the weights are not worth saving: no checkpoint at the stop, the epoch-end one stays latest."""
    schedule = [1.0] * 6 + [float("nan")] + [1.0] * 3
    with pytest.raises(RuntimeFailure) as stopped:
        run_training(make_job(tmp_path, schedule))
    assert "stopped by the nonfinite health check at step 7: train/kl_k1 is NaN" in stopped.value.message
    assert "checkpoint_00000005 (step 5)" in stopped.value.message
    assert read_step(latest_checkpoint(tmp_path / "run" / "rm_run")) == 5
    assert train_steps(tmp_path) == [1, 2, 3, 4, 5, 6, 7]
    assert [event["kind"] for event in events(tmp_path)] == ["start", "checkpoint", "health", "failure"]


def test_a_warning_is_shown_and_recorded_and_the_run_goes_on(tmp_path):
    sink = RecordingSink()
    summary = run_training(make_job(tmp_path, HIGH_FROM_STEP_3, monitor={"kl_action": "warn"}), progress=sink)
    assert summary.steps == 10
    assert [(alarm.check, alarm.step) for alarm in summary.alarms] == [("kl_ceiling", 4)]
    health = [event for event in events(tmp_path) if event["kind"] == "health"]
    assert [(event["check"], event["step"], event["action"]) for event in health] == [("kl_ceiling", 4, "warn")]
    assert [event.alarm.check for event in sink.events if isinstance(event, HealthAlarm)] == ["kl_ceiling"]
    assert events(tmp_path)[-1]["kind"] == "finish"


def test_monitor_enabled_false_runs_no_check(tmp_path):
    assert run_training(make_job(tmp_path, HIGH_FROM_STEP_3, monitor={"enabled": False})).steps == 10
    assert not [event for event in events(tmp_path) if event["kind"] == "health"]


def test_resume_after_a_stop_rebuilds_the_checks_and_stops_again_while_the_cause_remains(tmp_path):
    with pytest.raises(RuntimeFailure, match="health check at step 4"):
        run_training(make_job(tmp_path, HIGH_FROM_STEP_3))
    # unchanged: the KL is still high, so after kl_patience more steps the run stops again (not silently on)
    with pytest.raises(RuntimeFailure, match="health check at step 6"):
        run_training(make_job(tmp_path, HIGH_FROM_STEP_3), resume=True)
    assert read_step(latest_checkpoint(tmp_path / "run" / "rm_run")) == 6
    # with the check set to warn the run finishes; the alarm is recorded once more, two steps after the restart
    summary = run_training(make_job(tmp_path, HIGH_FROM_STEP_3, monitor={"kl_action": "warn"}), resume=True)
    assert summary.steps == 10 and summary.resumed_from_step == 6
    health = [(event["step"], event["action"]) for event in events(tmp_path) if event["kind"] == "health"]
    assert health == [(4, "stop"), (6, "stop"), (8, "warn")]
    assert train_steps(tmp_path) == list(range(1, 11))


def test_a_samples_alarm_stops_the_run_at_the_next_logged_step(tmp_path):
    job = make_job(tmp_path, [1.0] * 10, looping_samples_at=(2,), monitor={"ngram_action": "stop"})
    with pytest.raises(RuntimeFailure, match="stopped by the repeated_ngrams health check at step 2"):
        run_training(job)
    assert read_step(latest_checkpoint(tmp_path / "run" / "rm_run")) == 3  # decided at step 3's log


# ----------------------------------------------------------------------------------------------- unit


def test_settings_for_passes_the_response_length_limit_of_a_generating_stage(tmp_path):
    job = make_job(tmp_path, [1.0], monitor={"length_action": "stop"})
    assert settings_for(job.config) == HealthSettings(kl_max=5.0, kl_patience=2, length_action="stop")

    class WithGeneration:
        monitor = job.config.monitor
        generation = type("Generation", (), {"max_new_tokens": 48})()

    assert settings_for(WithGeneration()).max_response_tokens == 48


def test_ranks_agree_to_stop_when_any_rank_raised_a_stop_alarm():
    """Rank 1 has no alarm of its own (the looping samples were rank 0's) yet stops at the same log call."""
    sent: list[Alarm] = []
    flags: dict[int, dict[str, float]] = {}

    def agree_for(rank):
        def agree(rank_flags: dict[str, float]) -> dict[str, float]:
            flags[rank] = rank_flags
            return {key: sum(given[key] for given in flags.values()) for key in rank_flags}
        return agree

    settings = HealthSettings(ngram_action="stop")
    rank0 = WorkerHealth(settings, rank=0, send=sent.append, agree=agree_for(0))
    rank1 = WorkerHealth(settings, rank=1, send=sent.append, agree=agree_for(1))
    rank0.observe_samples(2, [{"response": LOOPING}] * 2)
    assert [alarm.check for alarm in sent] == ["repeated_ngrams"] and rank0.stop_pending is None
    rank0.observe(3, "train", {"loss": 1.0})  # the all-reduce (faked: each rank sees the flags given so far)
    rank1.observe(3, "train", {"loss": 1.0})
    assert rank0.stop_pending.check == "repeated_ngrams"
    assert rank1.stop_pending.check == "other_worker" and rank1.stop_pending.stops_run
    assert len(sent) == 1  # only rank 0 sends alarms to the driver


# ----------------------------------------------------------------------------------------------- two workers


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_workers_stop_together_on_rank_0s_samples_alarm(ray_cluster, tmp_path):
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules["health_loop"])  # Ray's processes cannot import it
    job = make_job(tmp_path, [1.0] * 10, looping_samples_at=(2,), monitor={"ngram_action": "stop"}, workers=2)
    assert job.mode == "ray"
    with pytest.raises(RuntimeFailure) as stopped:
        run_training(job)
    assert "stopped by the repeated_ngrams health check at step 2" in stopped.value.message
    assert read_step(latest_checkpoint(tmp_path / "run" / "rm_run")) == 3
    assert train_steps(tmp_path) == [1, 2, 3]
    assert [event["kind"] for event in events(tmp_path)].count("start") == 1  # not retried as a worker failure
