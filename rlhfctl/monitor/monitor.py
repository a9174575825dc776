"""``HealthMonitor``: feeds every logged step and sample batch to the health checks and returns new alarms.

```python
monitor = HealthMonitor(HealthSettings(kl_max=10.0))
for alarm in monitor.observe(step, "train", metrics):      # after each logged step
    print(alarm.message); stop = stop or alarm.stops_run
monitor.observe_samples(step, sample_rows)                 # rows with a "response" (or "completion") text
```

The driver owns one monitor per run (it sees every step's metrics anyway); :func:`replay` runs the same checks
over a finished or interrupted run's ``metrics.jsonl`` and ``samples.jsonl`` (``rlhfctl report`` does this).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import groupby
from typing import Any

from rlhfctl.monitor.checks import (
    RESPONSE_TEXT_KEYS,
    Alarm,
    EntropyCollapse,
    ExplainedVarianceStuck,
    KlCeiling,
    LengthAtLimit,
    NonFiniteMetrics,
    RepeatedNgrams,
    RewardDivergence,
    RewardModelLengthBias,
)
from rlhfctl.monitor.settings import HealthSettings

METRIC_CHECKS = (NonFiniteMetrics, KlCeiling, EntropyCollapse, RewardDivergence, LengthAtLimit,
                 ExplainedVarianceStuck, RewardModelLengthBias)
SAMPLE_CHECKS = (RepeatedNgrams,)
ACTION_KEYS: dict[str, str] = {check.name: check.action_key for check in (*METRIC_CHECKS, *SAMPLE_CHECKS)}
"""Check name -> the settings field (and ``[monitor]`` key) of its action: ``{"kl_ceiling": "kl_action", ...}``."""
NOT_METRICS = frozenset({"step", "epoch", "split", "time"})  # bookkeeping fields of a metrics.jsonl line


class HealthMonitor:
    """Runs every health check on what a run logs; each ``observe*`` call returns only the alarms it raised."""

    def __init__(self, settings: HealthSettings | None = None) -> None:
        self.settings = settings or HealthSettings()
        enabled = self.settings.enabled
        self._metric_checks = [check(self.settings) for check in METRIC_CHECKS] if enabled else []
        self._sample_checks = [check(self.settings) for check in SAMPLE_CHECKS] if enabled else []
        self.alarms: list[Alarm] = []  # every alarm so far, in order

    def observe(self, step: int, split: str, metrics: Mapping[str, Any]) -> list[Alarm]:
        """One logged step (``split="train"``) or validation pass (``"validation"``); values may be None (NaN)."""
        values = {key: value for key, value in metrics.items() if key not in NOT_METRICS}
        return self._keep(check.observe(step, split, values) for check in self._metric_checks)

    def observe_samples(self, step: int, rows: Sequence[Mapping[str, Any]]) -> list[Alarm]:
        """One step's sampled rows (``samples.jsonl``): the text under ``response`` (or ``completion``) is read."""
        responses = [text for row in rows if (text := response_text(row)) is not None]
        return self._keep(check.observe_samples(step, responses) for check in self._sample_checks)

    def resume(self, metric_records: Iterable[Mapping[str, Any]], up_to_step: int) -> None:
        """Continue a run restarted from the checkpoint of ``up_to_step``: feed it the run's earlier metric records
        (``metrics.jsonl`` lines, in order) up to that step without raising alarms, then rearm every check.

        Baselines come back (the early entropy, the best held-out reward, the train rewards since); streaks count
        from zero again and a condition that still holds is reported again: a run stopped by an alarm and resumed
        unchanged stops again after the check's patience, rather than going on silently.
        """
        for record in metric_records:
            step = record.get("step")
            if isinstance(step, int) and step <= up_to_step:
                values = {key: value for key, value in record.items() if key not in NOT_METRICS}
                for check in self._metric_checks:
                    check.observe(step, str(record.get("split", "train")), values)
        for check in (*self._metric_checks, *self._sample_checks):
            check.rearm()

    @property
    def should_stop(self) -> bool:
        """True once any alarm whose action is ``stop`` fired."""
        return any(alarm.stops_run for alarm in self.alarms)

    def _keep(self, results: Iterable[Alarm | None]) -> list[Alarm]:
        new = [alarm for alarm in results if alarm is not None]
        self.alarms.extend(new)
        return new


def response_text(row: Mapping[str, Any]) -> str | None:
    for key in RESPONSE_TEXT_KEYS:
        if isinstance(row.get(key), str):
            return row[key]
    return None


def replay(metric_records: Iterable[Mapping[str, Any]], sample_records: Iterable[Mapping[str, Any]] = (),
           settings: HealthSettings | None = None) -> list[Alarm]:
    """Every alarm a monitor would have raised over a run's logged records (``metrics.jsonl``/``samples.jsonl``).

    Records are fed in the order a live run produces them: metrics in file order, each step's samples right
    after that step's metrics. Records without an integer ``step`` are skipped.
    """
    monitor = HealthMonitor(settings)
    samples_by_step = [(step, list(rows)) for step, rows in
                       groupby((row for row in sample_records if isinstance(row.get("step"), int)),
                               key=lambda row: row["step"])]
    next_sample = 0

    def feed_samples_up_to(step: float) -> None:
        nonlocal next_sample
        while next_sample < len(samples_by_step) and samples_by_step[next_sample][0] <= step:
            monitor.observe_samples(*samples_by_step[next_sample])
            next_sample += 1

    for record in metric_records:
        step = record.get("step")
        if not isinstance(step, int):
            continue
        feed_samples_up_to(step - 1)
        monitor.observe(step, str(record.get("split", "train")), record)
    feed_samples_up_to(float("inf"))
    return monitor.alarms
