"""HealthMonitor: feeding steps and samples, new alarms only, stop requests, replay of a logged run, settings."""

from __future__ import annotations

import pytest

from rlhfctl.monitor import HealthMonitor, HealthSettings, replay


def test_monitor_returns_only_new_alarms_and_remembers_them() -> None:
    monitor = HealthMonitor(HealthSettings(kl_max=10.0, kl_patience=2))
    assert monitor.observe(1, "train", {"step": 1, "time": 5.0, "kl": 11.0, "loss": 0.3}) == []
    raised = monitor.observe(2, "train", {"kl": 12.0, "loss": 0.2})
    assert [alarm.check for alarm in raised] == ["kl_ceiling"]
    assert monitor.observe(3, "train", {"kl": 13.0, "loss": 0.2}) == []  # still above: not raised again
    assert monitor.alarms == raised and monitor.should_stop  # kl_action defaults to "stop"


def test_monitor_warn_actions_do_not_ask_to_stop() -> None:
    monitor = HealthMonitor(HealthSettings(kl_patience=1, kl_action="warn"))
    assert monitor.observe(1, "train", {"kl": 100.0})[0].action == "warn"
    assert not monitor.should_stop


def test_monitor_reads_response_text_of_sample_rows() -> None:
    monitor = HealthMonitor(HealthSettings(ngram_size=1, ngram_repeat_max=0.5, ngram_response_share=0.5))
    rows = [{"prompt": "p", "response": "no no no no", "score": 1.0}, {"prompt": "p", "completion": "yes yes yes"},
            {"prompt": "p", "score": 2.0}]
    alarms = monitor.observe_samples(7, rows)
    assert [(alarm.check, alarm.step) for alarm in alarms] == [("repeated_ngrams", 7)]
    assert "2 of 2 sampled responses" in alarms[0].message  # the row without text is not counted


def test_disabled_monitor_raises_nothing() -> None:
    monitor = HealthMonitor(HealthSettings(enabled=False))
    assert monitor.observe(1, "train", {"loss": None, "kl": 1e9}) == []
    assert monitor.observe_samples(1, [{"response": "a a a a a a a a"}]) == []


def test_replay_feeds_a_logged_run_in_order() -> None:
    metrics = [{"step": 0, "split": "validation", "score_mean": 1.0},
               *[{"step": step, "split": "train", "epoch": 0, "time": 100.0 + step, "score_mean": 1.0 + step / 10,
                  "kl_k1": 30.0 if step >= 3 else 1.0} for step in range(1, 7)],
               {"step": 6, "split": "validation", "score_mean": 0.5}, {"split": "train"}]  # last: no step, skipped
    samples = [{"step": 2, "response": "ok then"}, {"step": 4, "response": "go go go go go go"},
               {"step": 4, "response": "go go go go go go go"}]
    alarms = replay(metrics, samples, HealthSettings(kl_patience=3, ngram_size=1, divergence_patience=1))
    assert [(alarm.check, alarm.step) for alarm in alarms] == [
        ("repeated_ngrams", 4), ("kl_ceiling", 5), ("reward_divergence", 6)]


@pytest.mark.parametrize(("settings", "message"), [
    ({"kl_action": "halt"}, "kl_action must be one of warn, stop, got 'halt'"),
    ({"kl_patience": 0}, "kl_patience must be a whole number >= 1"),
    ({"entropy_min_ratio": 1.5}, "entropy_min_ratio must be in (0, 1]"),
    ({"max_response_tokens": 0}, "max_response_tokens must be >= 1 or None"),
])
def test_settings_reject_bad_values_with_the_field_name(settings: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        HealthSettings(**settings)
    assert message in str(error.value)


def test_settings_are_a_frozen_dataclass_with_documented_defaults() -> None:
    settings = HealthSettings()
    assert (settings.kl_max, settings.kl_action, settings.nonfinite_action) == (20.0, "stop", "stop")
    assert settings.entropy_action == settings.length_action == settings.ngram_action == "warn"
    with pytest.raises(AttributeError):
        settings.kl_max = 5.0  # type: ignore[misc]


def test_resume_keeps_baselines_and_reports_a_condition_that_still_holds() -> None:
    """After a restart from the checkpoint of step 6: the entropy baseline of steps 1-2 is kept (not relearnt from
    the collapsed values), and the KL streak counts again, so a KL still above the ceiling is raised once more."""
    history = [{"step": step, "split": "train", "entropy": entropy, "kl": kl, "time": 1.0}
               for step, entropy, kl in [(1, 2.0, 1.0), (2, 2.0, 1.0), (3, 0.1, 9.0), (4, 0.1, 9.0),
                                         (5, 0.1, 9.0), (6, 0.1, 9.0), (7, 0.1, 9.0)]]
    settings = HealthSettings(entropy_baseline_steps=2, entropy_patience=2, entropy_min_ratio=0.5, kl_max=5.0,
                              kl_patience=2)
    monitor = HealthMonitor(settings)
    monitor.resume(history, up_to_step=6)  # step 7 was logged after the checkpoint: ignored
    assert monitor.alarms == []  # the history raises nothing again
    assert monitor.observe(7, "train", {"entropy": 0.1, "kl": 9.0}) == []
    raised = monitor.observe(8, "train", {"entropy": 0.1, "kl": 9.0})
    assert sorted(alarm.check for alarm in raised) == ["entropy_collapse", "kl_ceiling"]
    fresh = HealthMonitor(settings)  # without the history the baseline would be the collapsed entropy
    assert [alarm.check for step in (7, 8, 9, 10) for alarm in fresh.observe(step, "train", {"entropy": 0.1})] == []
