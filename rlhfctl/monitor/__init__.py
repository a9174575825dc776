"""Health checks on what a training run logs: pure Python over metric histories and sampled text (no torch).

- :mod:`rlhfctl.monitor.stats`: Spearman rank correlation, "longer wins" accuracy, repeated n-grams.
- :mod:`rlhfctl.monitor.checks`: one small class per check and the :class:`Alarm` they return.
- :mod:`rlhfctl.monitor.settings`: :class:`HealthSettings`, every threshold and action with its default.
- :mod:`rlhfctl.monitor.monitor`: :class:`HealthMonitor` (fed step by step) and :func:`replay` (a whole run).
"""

from rlhfctl.monitor.checks import Alarm
from rlhfctl.monitor.monitor import HealthMonitor, replay
from rlhfctl.monitor.settings import HealthSettings
from rlhfctl.monitor.stats import LengthBias, length_bias

__all__ = ["Alarm", "HealthMonitor", "HealthSettings", "LengthBias", "length_bias", "replay"]
