"""How a failed run is told: the runtime failure with the checkpoint it kept and the command that continues it, and
what a Ray Train failure carries (a worker's UserError shown as itself, a worker group that could not start).

```python
raise failure_message(paths, "interrupted", "rm.toml")      # RuntimeFailure naming the latest checkpoint + --resume
user_error = user_error_inside(exc)                           # a worker's UserError inside Ray Train's error, or None
```
"""

from __future__ import annotations

from typing import Any

from rlhfctl.errors import RlhfctlError, RuntimeFailure, UserError, first_line
from rlhfctl.training import checkpoint as ckpt
from rlhfctl.training.health import HealthStopped
from rlhfctl.training.run_directory import RunPaths, resume_command


def failure_message(paths: RunPaths, what: str, config_path: str | None, *,
                    outcome: str = "failed") -> RuntimeFailure:
    latest = ckpt.latest_checkpoint(paths.run_dir)
    where = (f"The latest complete checkpoint is {latest} (step {ckpt.read_step(latest)})." if latest
             else "No checkpoint was written yet.")
    return RuntimeFailure(f"{paths.stage} training {outcome}: {what}\n{where}",
                          hint=f"Continue with: {resume_command(paths.stage, config_path)}")


def health_stop_message(paths: RunPaths, stopped: HealthStopped, config_path: str | None) -> RuntimeFailure:
    """A run stopped by a health alarm: the reason, the checkpoint it kept, how to continue (exit 1)."""
    alarm = stopped.alarm
    return failure_message(
        paths, f"{alarm.message}. Fix the cause, or make the check only warn (monitor.{_action_key(alarm.check)} = "
               "\"warn\"), then continue from the checkpoint", config_path,
        outcome=f"stopped by the {alarm.check} health check at step {alarm.step}")


def _action_key(check: str) -> str:
    """The ``[monitor]`` key that sets a check's action (``kl_ceiling`` -> ``kl_action``)."""
    from rlhfctl.monitor.monitor import ACTION_KEYS

    return ACTION_KEYS.get(check, "<check>_action")


def user_error_inside(exc: BaseException) -> RlhfctlError | None:
    """A UserError raised inside a worker (e.g. a tokenizer problem) is shown as itself, not as a crash."""
    failures = getattr(exc, "worker_failures", None) or {}
    for failure in failures.values():
        seen = failure
        while seen is not None:
            if isinstance(seen, UserError):
                return seen
            seen = seen.__cause__
    return None


def describe_ray_failure(exc: BaseException, request: Any, wait_minutes: float) -> str:
    """One line for a failed Ray Train run: the worker group that could not start in time, each failed worker's
    error, or the exception itself. ``request`` is the run's ``ResourceRequest``."""
    controller_failure = getattr(exc, "controller_failure", None)
    if type(controller_failure).__name__ == "WorkerGroupStartupTimeoutError":
        return (f"Ray could not start the {request.describe()} within training.resource_wait_minutes = "
                f"{wait_minutes:g}: the cluster does not have those resources free (a node lost and not "
                "replaced, or taken by other jobs). Add capacity, or ask for fewer workers or resources, then "
                "continue from the latest checkpoint")
    failures = getattr(exc, "worker_failures", None)
    if failures:
        parts = []
        for rank, failure in sorted(failures.items()):
            parts.append(f"worker rank {rank}: {type(failure).__name__}: {first_line(failure)}")
        return "; ".join(parts)
    return f"{type(exc).__name__}: {first_line(exc)}"
