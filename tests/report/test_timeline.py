"""A run's timeline from events.jsonl or inferred, and its health alarms (recorded and replayed)."""

from __future__ import annotations

import json

from rlhfctl.monitor import Alarm, HealthSettings
from rlhfctl.report.run_data import load_run
from rlhfctl.report.timeline import health_settings, run_alarms, timeline

from .conftest import T0


def append_events(folder, *events: dict) -> None:
    with open(folder / "events.jsonl", "a", encoding="utf-8") as handle:
        for event in events:
            handle.write(json.dumps(event) + "\n")


def test_timeline_from_events_with_a_failure_a_resume_a_notice_and_a_recorded_alarm(make_run) -> None:
    folder = make_run("ppo", finished=False)
    alarm = Alarm("entropy_collapse", "warn", "policy entropy fell", 25, "train", 0.1, 0.3)
    append_events(folder,
                  {"time": T0 + 12.6, "kind": "health", **alarm.to_record()},
                  {"time": T0 + 16, "kind": "failure", "step": 30, "message": "ppo training failed: interrupted"},
                  {"time": T0 + 100, "kind": "notice", "message": "the config changed (training.epochs)"},
                  {"time": T0 + 101, "kind": "start", "stage": "ppo", "world_size": 2, "start_step": 30,
                   "total_steps": 40, "samples_per_step": 16},
                  {"time": T0 + 110, "kind": "finish", "step": 40, "final_metrics": {}})
    entries = timeline(load_run(folder))
    assert [(entry.kind, entry.step) for entry in entries] == [
        ("start", 0), ("checkpoint", 10), ("checkpoint", 20), ("health", 25), ("checkpoint", 30), ("failure", 30),
        ("notice", None), ("resume", 30), ("finish", 40)]
    by_kind = {entry.kind: entry for entry in entries}
    assert by_kind["start"].message == "started ppo on 2 worker(s), 30 steps"
    assert by_kind["resume"].message == "resumed from the checkpoint of step 30 on 2 worker(s)"
    assert by_kind["failure"].severity == "error" and by_kind["notice"].severity == "warn"
    assert by_kind["health"].message == "entropy_collapse (warn): policy entropy fell"
    assert not any(entry.inferred for entry in entries)


def test_a_live_run_ends_with_its_last_record(make_run) -> None:
    entries = timeline(load_run(make_run("live", finished=False)))
    assert entries[-1].kind == "last record" and entries[-1].step == 30
    assert entries[-1].message == "last logged step 30 (running or interrupted)"


def test_without_events_the_timeline_is_inferred_from_metrics_and_checkpoints(make_run) -> None:
    entries = timeline(load_run(make_run("old", events=False)))
    assert [(entry.kind, entry.step) for entry in entries] == [
        ("start", 1), ("checkpoint", 10), ("checkpoint", 20), ("checkpoint", 30), ("last record", 30)]
    assert all(entry.inferred for entry in entries)
    assert entries[0].message == "first logged step 1 (inferred: no events.jsonl)"


def test_the_report_replays_the_health_checks_and_keeps_recorded_alarms_first(make_run) -> None:
    folder = make_run("hot", kl_scale=2.0)  # kl_k1 = 2 x step: above 20 from step 11, alarm at step 13
    found = run_alarms(load_run(folder))
    assert [(item.alarm.check, item.alarm.step, item.recorded) for item in found] == [("kl_ceiling", 13, False)]
    append_events(folder, {"time": T0 + 7, "kind": "health",
                           **Alarm("kl_ceiling", "stop", "recorded", 13, "train", 26.0, 20.0).to_record()})
    run = load_run(folder)
    found = run_alarms(run)
    assert [(item.alarm.message, item.recorded) for item in found] == [("recorded", True)]  # not twice
    entries = timeline(run)
    health = [entry for entry in entries if entry.kind == "health"]
    assert len(health) == 1 and health[0].severity == "error" and not health[0].inferred


def test_replayed_alarms_appear_on_the_timeline_at_their_step_time(make_run) -> None:
    run = load_run(make_run("hot", kl_scale=2.0))
    health = [entry for entry in timeline(run) if entry.kind == "health"]
    assert len(health) == 1 and health[0].inferred and health[0].step == 13
    assert health[0].time == T0 + 13 * 0.5
    assert "found by the report" in health[0].message


def test_health_settings_take_the_response_limit_from_the_config(make_run) -> None:
    assert health_settings(load_run(make_run("ppo"))).max_response_tokens == 32
    assert health_settings(load_run(make_run("rm", stage="rm"))).max_response_tokens is None


def test_health_settings_are_the_runs_own_monitor_section(make_run) -> None:
    """The report replays the checks with the thresholds the run used ([monitor] in resolved_config.toml)."""
    folder = make_run("strict")
    config = folder / "resolved_config.toml"
    config.write_text(config.read_text() + "\n[monitor]\nkl_max = 3.0\nkl_action = \"warn\"\n")
    settings = health_settings(load_run(folder))
    assert (settings.kl_max, settings.kl_action, settings.max_response_tokens) == (3.0, "warn", 32)
    config.write_text(config.read_text().replace("kl_max = 3.0", "kl_max = \"high\""))  # unreadable: the defaults
    assert health_settings(load_run(folder)).kl_max == HealthSettings().kl_max
