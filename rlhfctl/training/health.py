"""Health checks during training, on the workers: every rank runs the same checks and every rank stops together.

The checks are :mod:`rlhfctl.monitor`'s, configured by the stage's ``[monitor]`` section
(:func:`settings_for`). :class:`WorkerContext <rlhfctl.training.worker.WorkerContext>` feeds them:

- ``ctx.log(step, metrics)``: the metrics are already averaged over the workers, so every rank sees the same
  values and raises the same alarms; rank 0 sends each alarm to the driver (live display, ``events.jsonl``,
  trackers). Every rank calls ``ctx.log`` at the same points, so it is also where the ranks agree to stop: one
  all-reduce of a "stop" flag (samples exist on rank 0 only, so a sample alarm is known there first).
- ``ctx.log_samples(step, rows)``: rank 0 checks its sampled responses (repeated n-grams); a stop decision is
  shared at the next ``ctx.log``.

A stop alarm does not end the loop at once: ``ctx.checkpoint_due`` answers True from then on, so the loop saves a
checkpoint at its next consistent point (after the step's bookkeeping, or the epoch-end save), and ``ctx.save``
then raises :class:`HealthStop` on every rank. After a NaN/inf (:data:`BROKEN_STATE_CHECKS`) the weights are not
worth a checkpoint: ``ctx.log`` raises at once and the last good checkpoint stays the latest.
:func:`run_stoppable` wraps the stage's loop (on Ray and in-process alike) and turns that into a normal return of
:class:`HealthStopped`, so Ray Train does not restart the workers; the driver reports the reason, exits 1 and
prints the ``--resume`` command.

After a restart from a checkpoint the checks get the run's earlier metrics up to that step
(``CoreSettings.health_history``): baselines come back, streaks count again (:meth:`HealthMonitor.resume`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlhfctl.monitor import Alarm, HealthMonitor, HealthSettings


class HealthStop(Exception):
    """Raised on every rank by ``ctx.save`` once the ranks agreed to stop for ``alarm``."""

    def __init__(self, alarm: Alarm, checkpoint_step: int | None) -> None:
        super().__init__(alarm.message)
        self.alarm = alarm
        self.checkpoint_step = checkpoint_step


@dataclass(frozen=True)
class HealthStopped:
    """What a stage's loop returns (through :func:`run_stoppable`) when a stop alarm ended it."""

    alarm: Alarm
    checkpoint_step: int | None  # the checkpoint saved where the run stopped (None after a NaN/inf)


def run_stoppable(train_loop: Callable[[Any], dict[str, float]], loop_config: Any) -> dict[str, float] | HealthStopped:
    """Run the stage's ``train_loop``; a :class:`HealthStop` becomes a normal return (module level: picklable as
    ``functools.partial(run_stoppable, train_loop)``)."""
    try:
        return train_loop(loop_config)
    except HealthStop as stop:
        return HealthStopped(alarm=stop.alarm, checkpoint_step=stop.checkpoint_step)


def settings_for(config: Any) -> HealthSettings:
    """The stage config's ``[monitor]`` section as the library's settings, with the stage's response length limit
    (``generation.max_new_tokens``, when the stage generates)."""
    generation = getattr(config, "generation", None)
    limit = getattr(generation, "max_new_tokens", None)
    monitor = getattr(config, "monitor", None)
    if monitor is None:
        return HealthSettings(max_response_tokens=limit)
    return monitor.health_settings(max_response_tokens=limit)


OTHER_RANK_STOPPED = "a stop alarm raised on another worker (see the driver's log and events.jsonl)"
BROKEN_STATE_CHECKS = frozenset({"nonfinite"})  # stop without a checkpoint: the state that raised them is broken


class WorkerHealth:
    """One worker's health checks and its share of the stop decision.

    ``send(alarm)`` hands an alarm to the driver (rank 0 only does anything with it); ``agree(flags)`` sums
    ``{"stop": 0/1, "broken": 0/1}`` over the ranks (an all-reduce; the identity on one worker).
    """

    def __init__(self, settings: HealthSettings, *, rank: int, send: Callable[[Alarm], None],
                 agree: Callable[[dict[str, float]], dict[str, float]]) -> None:
        self.monitor = HealthMonitor(settings)
        self.enabled = settings.enabled
        self.rank = rank
        self._send = send
        self._agree = agree
        self._local_stop: Alarm | None = None  # a stop alarm this rank raised, not yet agreed on
        self.stop_pending: Alarm | None = None  # the ranks agreed to stop: save a checkpoint, then stop

    def resume(self, history: Sequence[Mapping[str, Any]], start_step: int) -> None:
        """The run restarts from the checkpoint of ``start_step``: rebuild baselines from its earlier metrics."""
        if self.enabled and start_step > 0 and history:
            self.monitor.resume(history, start_step)

    def observe(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        """One logged step or validation pass (the same values on every rank); then the ranks agree."""
        if not self.enabled:
            return
        self._raise(self.monitor.observe(step, split, metrics))
        if self.stop_pending is not None:
            return  # every rank agreed at the same call: none calls the all-reduce again
        local = self._local_stop
        agreed = self._agree({"stop": float(local is not None),
                              "broken": float(local is not None and local.check in BROKEN_STATE_CHECKS)})
        if agreed["stop"] > 0:
            self.stop_pending = local or Alarm("other_worker", "stop", OTHER_RANK_STOPPED, step, split)
        if agreed["broken"] > 0:
            raise HealthStop(self.stop_pending, checkpoint_step=None)

    def observe_samples(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rank 0's sampled rows (no collective: the decision is shared at the next :meth:`observe`)."""
        if self.enabled:
            self._raise(self.monitor.observe_samples(step, rows))

    def _raise(self, alarms: list[Alarm]) -> None:
        for alarm in alarms:
            if self.rank == 0:
                self._send(alarm)
            if alarm.stops_run and self._local_stop is None:
                self._local_stop = alarm
