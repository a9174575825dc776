"""Progress rendering: plain lines without a terminal, the live panel, quiet mode (rendered to a StringIO)."""

from __future__ import annotations

import io

from rich.console import Console

from rlhfctl.monitor import Alarm
from rlhfctl.progress.events import (
    CheckpointSaved,
    HealthAlarm,
    Notice,
    NullSink,
    PhaseStarted,
    RunFinished,
    RunLayout,
    RunStarted,
    SampleEvent,
    StepEvent,
)
from rlhfctl.progress.render import (
    LiveSink,
    PlainSink,
    ProgressState,
    StartupPhases,
    format_duration,
    format_seconds,
    make_sink,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200, force_terminal=terminal, color_system=None), buffer


def test_plain_sink_prints_start_throttled_steps_validation_and_rate():
    console, buffer = _console(terminal=False)
    clock = FakeClock()
    sink = PlainSink(console, interval_s=5.0, clock=clock)
    sink.handle(RunStarted(stage="rm", total_steps=10, start_step=0, world_size=2, samples_per_step=16))
    for step in range(1, 11):
        clock.now += 1.0
        sink.handle(StepEvent(step=step, epoch=0, split="train", metrics={"loss": 1.0 / step, "accuracy": 0.5}))
    sink.handle(StepEvent(step=10, epoch=0, split="validation", metrics={"accuracy": 0.95}))
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "rm: 2 worker(s) running, starting at step 0 of 10"
    step_lines = [line for line in lines if line.startswith("rm step")]
    assert [line.split()[2] for line in step_lines] == ["1/10", "6/10", "10/10"]  # every 5 s + the last step
    assert "loss=0.1 accuracy=0.5" in step_lines[-1]
    assert "16.0 samples/s" in step_lines[-1]  # 9 steps x 16 samples in 9 s
    assert lines[-1] == "rm validation step 10 epoch 0: accuracy=0.95"


def test_live_sink_renders_metrics_checkpoint_and_samples():
    console, buffer = _console(terminal=True)
    sink = LiveSink(console, clock=FakeClock())
    sink.handle(RunStarted(stage="ppo", total_steps=4, start_step=2, world_size=1, samples_per_step=8))
    sink.handle(StepEvent(step=3, epoch=1, split="train", metrics={"score_mean": 1.25}))
    sink.handle(CheckpointSaved(step=3, path="/x"))
    sink.handle(SampleEvent(step=3, rows=[{"prompt": "hi", "response": "hello"}]))
    sink.handle(RunFinished(steps=4, final_metrics={}))
    sink.close()
    text = buffer.getvalue()
    assert "ppo  epoch 1  step 3/4" in text
    assert "score_mean" in text and "1.25" in text
    assert "checkpoint @ step 3" in text
    assert "'hello'" in text


def test_make_sink_picks_by_terminal_and_quiet():
    plain_console, _ = _console(terminal=False)
    assert isinstance(make_sink(plain_console), PlainSink)
    assert isinstance(make_sink(plain_console, quiet=True), NullSink)
    live_console, _ = _console(terminal=True)
    live = make_sink(live_console)
    assert isinstance(live, LiveSink)
    live.close()


def test_progress_state_rate_and_eta_after_a_restart():
    state = ProgressState()
    state.update(RunStarted(stage="rm", total_steps=100, start_step=40, world_size=2, samples_per_step=10), now=0.0)
    state.update(StepEvent(step=41, epoch=0, split="train", metrics={}), now=1.0)
    state.update(StepEvent(step=51, epoch=0, split="train", metrics={}), now=6.0)
    assert state.samples_per_second() == 20.0  # 10 steps x 10 samples in 5 s
    assert state.eta_seconds() == 24.5  # 49 steps left x 10 samples / 20 per s
    assert format_duration(3725) == "1:02:05" and format_duration(None) == "--:--"


def test_notices_are_printed():
    console, buffer = _console(terminal=False)
    PlainSink(console, clock=FakeClock()).handle(Notice("the config changed"))
    assert buffer.getvalue() == "note: the config changed\n"


def _start_up(sink, clock: FakeClock) -> None:
    """A 2-worker run's start-up: the driver's phases, then the workers' (event times: their own clocks)."""
    sink.handle(RunLayout("rm", "2 workers x {1 CPU} on an embedded local Ray", time=1000.0))
    for name, at in (("starting Ray, reading data", 1000.0), ("starting 2 workers", 1002.5),
                     ("loading model", 1008.0), ("tokenising 1,900 pairs", 1011.25)):
        clock.now += 1.0
        sink.handle(PhaseStarted(name, time=at))
    clock.now += 2.0
    sink.handle(RunStarted(stage="rm", total_steps=10, start_step=0, world_size=2, samples_per_step=16,
                           time=1011.75))


def test_plain_sink_names_each_start_up_phase_and_times_them_at_the_first_step():
    console, buffer = _console(terminal=False)
    clock = FakeClock()
    sink = PlainSink(console, clock=clock)
    _start_up(sink, clock)
    sink.handle(StepEvent(step=1, epoch=0, split="train", metrics={"loss": 0.5}, time=1012.0))
    lines = buffer.getvalue().splitlines()
    assert lines[:5] == ["rm: 2 workers x {1 CPU} on an embedded local Ray", "rm: starting Ray, reading data ...",
                         "rm: starting 2 workers ...", "rm: loading model ...", "rm: tokenising 1,900 pairs ..."]
    assert lines[6] == ("rm: first step 12.0 s after start-up began (starting Ray, reading data 2.5 s, starting 2 "
                        "workers 5.5 s, loading model 3.2 s, tokenising 1,900 pairs 0.5 s, first step 0.2 s)")
    assert lines[7].startswith("rm step 1/10")


def test_live_sink_shows_the_running_phase_with_its_elapsed_time_instead_of_step_0():
    console, buffer = _console(terminal=True)
    clock = FakeClock()
    sink = LiveSink(console, clock=clock)
    _start_up(sink, clock)
    clock.now += 3.0
    sink._live.refresh()
    text = buffer.getvalue()
    assert "rm  first step ... 3.0 s" in text  # the running phase, timed by the display's clock
    assert "2 workers x {1 CPU} on an embedded local Ray" in text
    assert "starting 2 workers 5.5 s, loading model 3.2 s" in text  # the finished ones, by the events' clocks
    assert "step 0/" not in text
    sink.handle(StepEvent(step=1, epoch=0, split="train", metrics={"loss": 0.5}, time=1012.0))
    sink.close()
    text = buffer.getvalue()
    assert "rm  epoch 0  step 1/10" in text
    assert "start-up 12.0 s: starting Ray, reading data 2.5 s" in text


def test_start_up_phases_durations_total_and_restart():
    phases = StartupPhases()
    assert phases.current(5.0) is None and phases.total() is None
    phases.begin("reading data", at=10.0, now=0.0)
    phases.begin("loading model", at=10.5, now=0.5)
    assert phases.current(2.0) == ("loading model", 1.5)
    phases.finish(at=13.0)
    phases.finish(at=99.0)  # later steps change nothing
    assert phases.durations() == [("reading data", 0.5), ("loading model", 2.5)] and phases.total() == 3.0
    assert phases.current(5.0) is None and format_seconds(75) == "1:15"
    phases.begin("starting 2 workers", at=50.0, now=40.0)  # a restart after steps had begun: a new start-up
    assert phases.durations() == [] and phases.current(41.0) == ("starting 2 workers", 1.0)


def test_health_alarms_are_one_line_each_in_both_modes():
    warning = HealthAlarm(Alarm("entropy_collapse", "warn", "policy entropy fell to 0.1", 40, "train", 0.1, 0.5))
    stop = HealthAlarm(Alarm("kl_ceiling", "stop", "KL is 25 nats", 41, "train", 25.0, 20.0))
    console, buffer = _console(terminal=False)
    plain = PlainSink(console, clock=FakeClock())
    plain.handle(warning)
    plain.handle(stop)
    assert buffer.getvalue().splitlines() == [
        "health warning entropy_collapse at step 40: policy entropy fell to 0.1",
        "health check kl_ceiling stops the run at step 41: KL is 25 nats"]

    console, buffer = _console(terminal=True)
    live = LiveSink(console, clock=FakeClock())
    live.handle(RunStarted(stage="ppo", total_steps=50, start_step=0, world_size=1, samples_per_step=8))
    live.handle(warning)
    live.handle(StepEvent(step=40, epoch=0, split="train", metrics={"entropy": 0.1}))
    live.close()
    text = buffer.getvalue()
    assert "health warning entropy_collapse at step 40: policy entropy fell to 0.1" in text
    assert "1 health alarm(s)" in text  # and counted in the panel
