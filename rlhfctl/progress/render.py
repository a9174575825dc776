"""Driver-side progress display: a Rich live panel on a terminal, a plain line every few seconds otherwise.

Only the driver draws; it receives :mod:`rlhfctl.progress.events` from the training core. The console and the
clock are injectable so tests render to a ``Console(file=StringIO())`` deterministically.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from rlhfctl.progress.events import (
    CheckpointSaved,
    HealthAlarm,
    Notice,
    NullSink,
    PhaseStarted,
    ProgressEvent,
    ProgressSink,
    RunFinished,
    RunLayout,
    RunStarted,
    SampleEvent,
    StepEvent,
)

MAX_METRICS_SHOWN = 8


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_value(value: float) -> str:
    if value != value:
        return "nan"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.3e}"


def format_seconds(seconds: float) -> str:
    """``2.7 s`` below a minute, ``1:05`` above."""
    return f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)


FIRST_STEP = "first step"


@dataclass
class StartupPhases:
    """The start-up phases until the first optimizer step: each lasts until the next one starts.

    Finished phases are timed with the events' own clocks (``event.time``: the driver's or a worker's wall clock,
    so the poll interval does not blur them); the running one with the display's clock since it arrived.
    """

    names: list[str] = field(default_factory=list)
    started: list[float] = field(default_factory=list)  # event.time of each phase's start
    arrived_at: float | None = None  # display clock when the running phase's event arrived
    done_at: float | None = None  # event time of the first step (None while starting)

    def begin(self, name: str, at: float, now: float) -> None:
        if self.done_at is not None:  # a restart after steps had begun: a new start-up
            self.names, self.started, self.done_at = [], [], None
        self.names.append(name)
        self.started.append(at)
        self.arrived_at = now

    def finish(self, at: float) -> None:
        if self.done_at is None and self.names:
            self.done_at = at

    @property
    def running(self) -> bool:
        return bool(self.names) and self.done_at is None

    def durations(self) -> list[tuple[str, float]]:
        """(name, seconds) of every finished phase."""
        ends = self.started[1:] + ([self.done_at] if self.done_at is not None else [])
        return [(name, max(0.0, end - start)) for name, start, end in zip(self.names, self.started, ends)]

    def total(self) -> float | None:
        """Seconds from the first phase to the first step (None while starting)."""
        return None if self.done_at is None else max(0.0, self.done_at - self.started[0])

    def current(self, now: float) -> tuple[str, float] | None:
        """The running phase and its elapsed seconds."""
        if not self.running or self.arrived_at is None:
            return None
        return self.names[-1], max(0.0, now - self.arrived_at)

    def summary(self) -> str:
        """``reading data 0.0 s, starting Ray 2.7 s, ...`` (finished phases)."""
        return ", ".join(f"{name} {format_seconds(seconds)}" for name, seconds in self.durations())


def format_parameters(trainable: int | None, total: int | None) -> str:
    """``"trainable parameters 1.18M of 124.4M (0.95%)"`` ("" when the counts are unknown)."""
    if trainable is None or not total:
        return ""

    def millions(count: int) -> str:
        return f"{count / 1e6:.3g}M" if count >= 1e5 else f"{count:,}"

    return f"trainable parameters {millions(trainable)} of {millions(total)} ({100 * trainable / total:.3g}%)"


def alarm_text(event: HealthAlarm) -> Text:
    """One line for a health alarm: yellow for a warning, bold red for one that stops the run."""
    alarm = event.alarm
    if alarm.stops_run:
        return Text(f"health check {alarm.check} stops the run at step {alarm.step}: {alarm.message}",
                    style="bold red")
    return Text(f"health warning {alarm.check} at step {alarm.step}: {alarm.message}", style="yellow")


@dataclass
class ProgressState:
    """What the display knows about the run, updated from events."""

    stage: str = ""
    layout: str = ""  # the run's header: where its workers go
    phases: StartupPhases = field(default_factory=StartupPhases)
    total_steps: int = 0
    start_step: int = 0
    step: int = 0
    epoch: int = 0
    samples_per_step: int = 0
    world_size: int = 0
    parameters: str = ""  # format_parameters of the RunStarted counts
    train_metrics: dict[str, float] = field(default_factory=dict)
    validation_metrics: dict[str, float] = field(default_factory=dict)
    last_checkpoint_step: int | None = None
    samples: list[dict] = field(default_factory=list)
    started_at: float | None = None  # when the current attempt started stepping
    first_step_at: tuple[int, float] | None = None  # (step, time) of the first step seen in this attempt
    last_step_at: float | None = None
    finished: bool = False
    alarms: int = 0  # health alarms so far

    def update(self, event: ProgressEvent, now: float) -> None:
        if isinstance(event, RunLayout):
            self.stage, self.layout = event.stage, event.description
        elif isinstance(event, PhaseStarted):
            self.phases.begin(event.name, event.time, now)
        elif isinstance(event, RunStarted):
            self.phases.begin(FIRST_STEP, event.time, now)
            self.stage, self.total_steps, self.start_step = event.stage, event.total_steps, event.start_step
            self.step, self.samples_per_step, self.world_size = event.start_step, event.samples_per_step, event.world_size
            self.parameters = format_parameters(event.trainable_parameters, event.total_parameters)
            self.started_at = self.started_at or now
            self.first_step_at = None
        elif isinstance(event, StepEvent):
            self.epoch = event.epoch
            if event.split == "train":
                self.phases.finish(event.time)
                self.step = event.step
                self.train_metrics = dict(event.metrics)
                if self.first_step_at is None:
                    self.first_step_at = (event.step, now)
                self.last_step_at = now
            else:
                self.validation_metrics = dict(event.metrics)
        elif isinstance(event, CheckpointSaved):
            self.last_checkpoint_step = event.step
        elif isinstance(event, SampleEvent):
            self.samples = list(event.rows)[-3:]
        elif isinstance(event, RunFinished):
            self.finished = True
        elif isinstance(event, HealthAlarm):
            self.alarms += 1

    def samples_per_second(self) -> float | None:
        if not self.first_step_at or self.last_step_at is None or self.step <= self.first_step_at[0]:
            return None
        elapsed = self.last_step_at - self.first_step_at[1]
        steps = self.step - self.first_step_at[0]
        return steps * self.samples_per_step / elapsed if elapsed > 0 else None

    def eta_seconds(self) -> float | None:
        rate = self.samples_per_second()
        if not rate or not self.samples_per_step:
            return None
        return (self.total_steps - self.step) * self.samples_per_step / rate


class _BaseSink:
    def __init__(self, console: Console | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console or Console(stderr=True)
        self.clock = clock
        self.state = ProgressState()
        self._created = clock()

    def elapsed(self) -> float:
        return self.clock() - self._created

    def status_line(self) -> str:
        state = self.state
        metrics = " ".join(f"{key}={format_value(value)}"
                           for key, value in list(state.train_metrics.items())[:MAX_METRICS_SHOWN])
        rate = state.samples_per_second()
        rate_text = f"{rate:.1f} samples/s" if rate else "-- samples/s"
        return (f"{state.stage} step {state.step}/{state.total_steps} epoch {state.epoch} {metrics} | {rate_text} "
                f"| elapsed {format_duration(self.elapsed())} eta {format_duration(state.eta_seconds())}").replace(
            "  ", " ")


class PlainSink(_BaseSink):
    """Without a terminal (CI, pipes): one plain line every ``interval_s`` seconds, plus validation results,
    notices and health alarms (one line each)."""

    def __init__(self, console: Console | None = None, *, interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(console, clock)
        self.interval_s = interval_s
        self._last_print: float | None = None

    def handle(self, event: ProgressEvent) -> None:
        now = self.clock()
        phases_were_running = self.state.phases.running
        self.state.update(event, now)
        if isinstance(event, Notice):
            self.console.print(f"note: {event.message}", highlight=False, markup=False)
        elif isinstance(event, RunLayout):
            self.console.print(f"{event.stage}: {event.description}", highlight=False, markup=False)
        elif isinstance(event, PhaseStarted):
            self.console.print(f"{self.state.stage or 'run'}: {event.name} ...", highlight=False, markup=False)
        elif isinstance(event, HealthAlarm):
            self.console.print(alarm_text(event), highlight=False)
        elif isinstance(event, RunStarted):
            where = "resuming at" if event.start_step else "starting at"
            parameters = f"; {self.state.parameters}" if self.state.parameters else ""
            self.console.print(f"{event.stage}: {event.world_size} worker(s) running, {where} step "
                               f"{event.start_step} of {event.total_steps}{parameters}", highlight=False, markup=False)
        elif isinstance(event, StepEvent) and event.split == "validation":
            values = " ".join(f"{key}={format_value(value)}" for key, value in event.metrics.items())
            self.console.print(f"{self.state.stage} validation step {event.step} epoch {event.epoch}: {values}",
                               highlight=False, markup=False)
        elif isinstance(event, StepEvent) and (self._last_print is None or now - self._last_print >= self.interval_s
                                               or event.step == self.state.total_steps):
            if phases_were_running and not self.state.phases.running:
                self.console.print(f"{self.state.stage}: first step {format_seconds(self.state.phases.total() or 0)} "
                                   f"after start-up began ({self.state.phases.summary()})", highlight=False,
                                   markup=False)
            self._last_print = now
            self.console.print(self.status_line(), highlight=False, markup=False)

    def close(self) -> None:
        return None


class LiveSink(_BaseSink):
    """On a terminal: one Rich live panel (stage, epoch, step/total bar, metrics, lr, samples/s, elapsed, ETA);
    notices and health alarms are printed above it."""

    def __init__(self, console: Console | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(console, clock)
        self._lock = threading.Lock()  # events arrive on the driver's polling thread; Live redraws on its own
        # get_renderable: every refresh redraws, so the running start-up phase's elapsed time ticks between events
        self._live = Live(console=self.console, refresh_per_second=4, transient=False, get_renderable=self._render)
        self._live.start()

    def _render(self) -> Group:
        with self._lock:
            return self._render_state()

    def _render_state(self) -> Group:
        state = self.state
        current = state.phases.current(self.clock())
        if current is not None or not state.total_steps:
            return self._render_startup(current)
        done = state.step / state.total_steps if state.total_steps else 0.0
        width = 30
        bar = "#" * int(done * width) + "-" * (width - int(done * width))
        header = Text(f"{state.stage or 'training'}  epoch {state.epoch}  step {state.step}/{state.total_steps} "
                      f"[{bar}] {done:.0%}", style="bold")
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        table.add_column("metric")
        table.add_column("train", justify="right")
        table.add_column("validation", justify="right")
        names = list(dict.fromkeys(list(state.train_metrics) + list(state.validation_metrics)))[:MAX_METRICS_SHOWN * 2]
        for name in names:
            train = state.train_metrics.get(name)
            valid = state.validation_metrics.get(name)
            table.add_row(name, "" if train is None else format_value(train),
                          "" if valid is None else format_value(valid))
        rate = state.samples_per_second()
        footer = Text(f"{rate:.1f} samples/s" if rate else "-- samples/s")
        footer.append(f"   elapsed {format_duration(self.elapsed())}   eta {format_duration(state.eta_seconds())}")
        if state.last_checkpoint_step is not None:
            footer.append(f"   checkpoint @ step {state.last_checkpoint_step}")
        if state.parameters:
            footer.append(f"   {state.parameters}")
        if state.alarms:
            footer.append(f"   {state.alarms} health alarm(s)", style="yellow")
        parts = [header, table, footer]
        if state.phases.total() is not None:
            parts.append(Text(f"start-up {format_seconds(state.phases.total() or 0)}: {state.phases.summary()}",
                              style="dim"))
        for row in state.samples:
            parts.append(Text(" | ".join(f"{key}: {str(value)[:60]!r}" for key, value in row.items()), style="dim"))
        return Group(*parts)

    def _render_startup(self, current: tuple[str, float] | None) -> Group:
        """Before the first step: the phase under way with its elapsed time, the finished ones with theirs."""
        state = self.state
        name, elapsed = current or ("starting", self.elapsed())
        parts = [Text(f"{state.stage or 'training'}  {name} ... {format_seconds(elapsed)}", style="bold")]
        if state.layout:
            parts.append(Text(state.layout))
        if state.phases.durations():
            parts.append(Text(state.phases.summary(), style="dim"))
        return Group(*parts)

    def handle(self, event: ProgressEvent) -> None:
        if isinstance(event, Notice):
            self._live.console.print(f"note: {event.message}", highlight=False, markup=False)
        elif isinstance(event, HealthAlarm):
            self._live.console.print(alarm_text(event), highlight=False)
        with self._lock:
            self.state.update(event, self.clock())
        self._live.refresh()

    def close(self) -> None:
        self._live.stop()


def make_sink(console: Console | None = None, *, quiet: bool = False, plain_interval_s: float = 5.0) -> ProgressSink:
    """``--quiet``: nothing; a terminal: the live panel; otherwise plain lines."""
    if quiet:
        return NullSink()
    console = console or Console(stderr=True)
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveSink(console)
    return PlainSink(console, interval_s=plain_interval_s)
