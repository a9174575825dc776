"""Trackers: where a run's metrics and health alarms go besides ``metrics.jsonl`` (``general.report_to``).

Written by the driver (:class:`rlhfctl.training.metrics.MetricsRecorder` hands every logged step and alarm to each
tracker), through each tool's own client library:

- ``"tensorboard"``: ``output_dir/tensorboard`` with tensorboardX (the ``tensorboard`` extra); the default, left
  out silently when tensorboardX is missing and ``report_to`` was not set (what rlhfctl always did).
- ``"wandb"``: a Weights & Biases run (``pip install rlhfctl[wandb]``), **offline** into ``output_dir/wandb``
  unless the user's own ``WANDB_MODE`` says otherwise; ``WANDB_PROJECT`` (default ``rlhfctl``), ``WANDB_ENTITY``,
  ``WANDB_DIR`` and the rest of W&B's variables are honoured by W&B itself. Upload later with ``wandb sync``.
- ``"mlflow"``: an MLflow run (``pip install rlhfctl[mlflow]``) in a local SQLite store,
  ``output_dir/mlflow/mlflow.db``, unless ``MLFLOW_TRACKING_URI`` names another; ``MLFLOW_EXPERIMENT_NAME``
  (default ``rlhfctl``). Browse it with ``mlflow ui --backend-store-uri sqlite:///.../mlflow.db``. Metrics are
  written in batches (every 5 s, at each alarm, at the end); the config is logged as the run's parameters.

Nothing goes over the network unless those variables say so: W&B's error reports and MLflow's usage telemetry are
switched off (``WANDB_ERROR_REPORTING=false``, ``MLFLOW_DISABLE_TELEMETRY=true``) unless the user set them.
Metrics are named ``<split>/<name>`` (``train/loss``, ``validation/accuracy``) against the optimizer step; an
alarm is a ``health/<check>`` value (and, in MLflow, a ``health.<check>`` tag with its message). ``--resume``
continues the same W&B and MLflow runs: their ids are kept in ``output_dir/trackers.json``. A tracker that fails
mid-run is switched off with a notice; ``metrics.jsonl`` never depends on one.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rlhfctl.errors import UserError, first_line
from rlhfctl.fileio import atomic_write_text
from rlhfctl.monitor import Alarm
from rlhfctl.runfiles import MLFLOW_DIR, TENSORBOARD_DIR, TRACKERS_FILE, WANDB_DIR

# tracker -> (module that must be importable, the extra that installs it)
REQUIREMENTS = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb"),
                "mlflow": ("mlflow", "mlflow")}
MLFLOW_LOCAL_STORE_MODULES = ("sqlalchemy", "alembic")  # the default SQLite store needs these beside mlflow
DEFAULT_PROJECT = "rlhfctl"  # W&B project and MLflow experiment unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME
MLFLOW_BATCH = 100  # MLflow accepts at most 100 params per log_batch call
MLFLOW_METRICS_PER_BATCH = 1000  # ... and at most 1000 metrics
MLFLOW_FLUSH_S = 5.0  # metrics reach the MLflow store at least this often (and at every alarm and at the end)


class Tracker(Protocol):
    name: str

    def log_metrics(self, step: int, split: str, metrics: Mapping[str, float]) -> None: ...

    def log_alarm(self, alarm: Alarm) -> None: ...

    def close(self, *, failed: bool) -> None: ...


@dataclass(frozen=True)
class TrackerRun:
    """What the trackers need to know about the run."""

    output_dir: Path
    stage: str
    config: dict[str, Any]  # the resolved config (TOML-ready)
    resuming: bool  # continue the W&B / MLflow runs recorded in trackers.json
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    @property
    def run_label(self) -> str:
        return f"{self.stage} {self.output_dir.name}"


# ----------------------------------------------------------------------------------------------- before the run


def trackers_to_open(report_to: Sequence[str], *, explicit: bool,
                     environ: Mapping[str, str] = os.environ) -> list[str]:
    """The trackers this run opens, checked before anything starts (a missing package is a UserError, exit 2).

    ``explicit``: ``general.report_to`` was set in the config (the default ``["tensorboard"]`` is dropped quietly
    without tensorboardX, as before the key existed).
    """
    chosen = []
    for name in report_to:
        module, extra = REQUIREMENTS[name]
        if importlib.util.find_spec(module) is None:
            if name == "tensorboard" and not explicit:
                continue
            raise UserError(f"general.report_to includes {name} but the {module} package is not installed: "
                            f"pip install rlhfctl[{extra}]",
                            hint=f"Or remove {name!r} from general.report_to.")
        if name == "mlflow" and not environ.get("MLFLOW_TRACKING_URI"):
            missing = [module for module in MLFLOW_LOCAL_STORE_MODULES if importlib.util.find_spec(module) is None]
            if missing:
                raise UserError(f"general.report_to includes mlflow, whose local SQLite store needs "
                                f"{' and '.join(missing)}, not installed: pip install rlhfctl[mlflow]",
                                hint="Or set MLFLOW_TRACKING_URI to a tracking server.")
        chosen.append(name)
    return chosen


def open_trackers(names: Sequence[str], run: TrackerRun) -> list[Tracker]:
    """Open each tracker (an error opening one is a UserError naming it: its settings are the user's)."""
    stored = read_tracker_ids(run.output_dir) if run.resuming else {}
    opened: list[Tracker] = []
    try:
        for name in names:
            try:
                opened.append(_OPENERS[name](run, stored.get(name, {})))
            except UserError:
                raise
            except Exception as exc:  # the client library's own error: its message says what is wrong
                raise UserError(f"could not start the {name} tracker (general.report_to): {type(exc).__name__}: "
                                f"{first_line(exc, limit=300)}") from exc
    except BaseException:
        for tracker in opened:
            tracker.close(failed=True)
        raise
    ids = {tracker.name: tracker.ids for tracker in opened if getattr(tracker, "ids", None)}
    if ids:
        atomic_write_text(run.output_dir / TRACKERS_FILE, json.dumps(ids, indent=2) + "\n")
    return opened


def read_tracker_ids(output_dir: Path) -> dict[str, dict[str, str]]:
    try:
        ids = json.loads((Path(output_dir) / TRACKERS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return ids if isinstance(ids, dict) else {}


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and math.isfinite(value)}


def _alarm_value(alarm: Alarm) -> float:
    return alarm.value if alarm.value is not None and math.isfinite(alarm.value) else 1.0


# ----------------------------------------------------------------------------------------------- TensorBoard


# Imported by tensorboardX at import time when installed, used only for what rlhfctl never asks of it: torch (tensor
# values; rlhfctl logs floats), boto3 and google.cloud (s3:// and gs:// log directories; rlhfctl's are local) and
# comet_ml (its Comet logger, off unless a comet_config turns it on). boto3 alone is ~0.1 s of start-up.
TENSORBOARDX_UNUSED_IMPORTS = ("torch", "boto3", "google.cloud", "comet_ml")


def summary_writer_class():
    """``tensorboardX.SummaryWriter`` (``None`` when the ``tensorboard`` extra is not installed).

    tensorboardX imports several optional packages when they are installed (:data:`TENSORBOARDX_UNUSED_IMPORTS`)
    that an rlhfctl run never uses through it: torch (~140 MB in the driver of a Ray run, which otherwise never
    imports it), the S3 and GCS clients, Comet. Those not loaded yet are blocked while tensorboardX loads (a
    ``None`` entry in ``sys.modules`` makes their import raise ImportError, which tensorboardX handles) and
    unblocked afterwards, so the rest of the process imports them as usual.
    """
    blocked = [name for name in TENSORBOARDX_UNUSED_IMPORTS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return SummaryWriter


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, run: TrackerRun, stored: Mapping[str, str]) -> None:
        writer_class = summary_writer_class()
        if writer_class is None:
            raise UserError("general.report_to includes tensorboard but the tensorboardX package is not installed: "
                            "pip install rlhfctl[tensorboard]")
        self._writer = writer_class(str(run.output_dir / TENSORBOARD_DIR), flush_secs=10)

    def log_metrics(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        for name, value in _finite(metrics).items():
            self._writer.add_scalar(f"{split}/{name}", value, step)

    def log_alarm(self, alarm: Alarm) -> None:
        self._writer.add_scalar(f"health/{alarm.check}", _alarm_value(alarm), alarm.step)
        self._writer.add_text(f"health/{alarm.check}", f"{alarm.action}: {alarm.message}", alarm.step)

    def close(self, *, failed: bool) -> None:
        self._writer.close()


# ----------------------------------------------------------------------------------------------- Weights & Biases


class WandbTracker:
    """A W&B run: offline unless ``WANDB_MODE`` is set; the same run id after ``--resume``."""

    name = "wandb"

    def __init__(self, run: TrackerRun, stored: Mapping[str, str]) -> None:
        _quiet_by_default(os.environ, WANDB_ERROR_REPORTING="false")
        import wandb

        environ = run.environ
        run_id = stored.get("run_id") or uuid.uuid4().hex[:8]  # W&B's own ids: 8 characters of [a-z0-9]
        self._run = wandb.init(
            project=None if environ.get("WANDB_PROJECT") else DEFAULT_PROJECT,
            name=None if environ.get("WANDB_NAME") else run.run_label,
            dir=None if environ.get("WANDB_DIR") else str(run.output_dir),
            mode=None if environ.get("WANDB_MODE") else "offline",
            id=run_id, resume="allow", job_type=run.stage, reinit="create_new",
            # no console capture (it would fight the live display), no system-metrics sampling (CPU time)
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True,
                                    save_code=False),
        )
        self._run.config.update(run.config, allow_val_change=True)
        self._run.define_metric("step")
        self._run.define_metric("*", step_metric="step")  # steps replayed after a restart are still accepted
        self.ids = {"run_id": run_id}
        mode = self._run.settings.mode  # "offline", "online", or "disabled" (WANDB_MODE): then nothing to say
        sync_dir = Path(self._run.settings.sync_dir)
        self.where = {"offline": f"W&B run {run_id}, offline in {sync_dir} (upload it with: wandb sync {sync_dir})",
                      "online": f"W&B run {run_id} ({self._run.url})"}.get(mode)

    def log_metrics(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        values = {f"{split}/{name}": value for name, value in _finite(metrics).items()}
        if values:
            self._run.log({"step": step, **values})

    def log_alarm(self, alarm: Alarm) -> None:
        self._run.log({"step": alarm.step, f"health/{alarm.check}": _alarm_value(alarm)})
        self._run.summary[f"health/{alarm.check}"] = f"{alarm.action} at step {alarm.step}: {alarm.message}"

    def close(self, *, failed: bool) -> None:
        self._run.finish(exit_code=1 if failed else 0)


# ----------------------------------------------------------------------------------------------- MLflow


def mlflow_local_store(output_dir: Path) -> Path:
    return Path(output_dir) / MLFLOW_DIR / "mlflow.db"


class MlflowTracker:
    """An MLflow run in ``output_dir/mlflow/mlflow.db`` unless ``MLFLOW_TRACKING_URI``; resumed by its id."""

    name = "mlflow"

    def __init__(self, run: TrackerRun, stored: Mapping[str, str]) -> None:
        _quiet_by_default(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
        from mlflow.entities import Param, RunStatus
        from mlflow.tracking import MlflowClient

        from rlhfctl.config.render import dotted_values

        # MLflow logs at INFO (set up when it is imported) while it creates a new store's tables: not for the terminal
        # the live display draws on
        logging.getLogger("mlflow").setLevel(max(logging.WARNING, logging.getLogger("mlflow").getEffectiveLevel()))

        environ = run.environ
        local = not environ.get("MLFLOW_TRACKING_URI")
        if local:
            mlflow_local_store(run.output_dir).parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{mlflow_local_store(run.output_dir)}" if local else environ["MLFLOW_TRACKING_URI"]
        self._client = client = MlflowClient(tracking_uri=uri)
        run_id = stored.get("run_id") if stored.get("tracking_uri") == uri else None
        if run_id is not None and _mlflow_run_exists(client, run_id):
            client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        else:
            experiment_name = environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
            experiment = client.get_experiment_by_name(experiment_name)
            experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(
                experiment_name,
                artifact_location=(run.output_dir / MLFLOW_DIR / "artifacts").as_uri() if local else None)
            run_id = client.create_run(experiment_id, run_name=run.run_label,
                                       tags={"rlhfctl.stage": run.stage,
                                             "rlhfctl.output_dir": str(run.output_dir)}).info.run_id
            params = [Param(key, str(value)[:6000]) for key, value in dotted_values(run.config).items()]
            for start in range(0, len(params), MLFLOW_BATCH):  # params are write-once: logged when created
                client.log_batch(run_id, params=params[start:start + MLFLOW_BATCH])
        self.run_id = run_id
        self.ids = {"run_id": run_id, "tracking_uri": uri}
        self._pending: list[Any] = []  # metrics not written yet (see _flush)
        self._flushed_ms = int(time.time() * 1000)
        self.where = (f"MLflow run {run_id} in {uri} (browse it with: mlflow ui --backend-store-uri {uri})" if local
                      else f"MLflow run {run_id} at {uri}")

    def log_metrics(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(f"{split}/{name}", value, now, step) for name, value in _finite(metrics).items()]
        if len(self._pending) >= MLFLOW_METRICS_PER_BATCH or now - self._flushed_ms >= MLFLOW_FLUSH_S * 1000:
            self._flush()

    def log_alarm(self, alarm: Alarm) -> None:
        from mlflow.entities import Metric, RunTag

        self._pending.append(Metric(f"health/{alarm.check}", _alarm_value(alarm), int(time.time() * 1000),
                                    alarm.step))
        self._flush(tags=[RunTag(f"health.{alarm.check}",
                                 f"{alarm.action} at step {alarm.step}: {alarm.message}"[:5000])])

    def close(self, *, failed: bool) -> None:
        self._flush()
        self._client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")

    def _flush(self, tags: Sequence[Any] = ()) -> None:
        """One write per batch: a SQLite commit per step would cost the driver ~25 ms of CPU every step."""
        while self._pending or tags:
            batch, self._pending = self._pending[:MLFLOW_METRICS_PER_BATCH], self._pending[MLFLOW_METRICS_PER_BATCH:]
            self._client.log_batch(self.run_id, metrics=batch, tags=list(tags))
            tags = ()
        self._flushed_ms = int(time.time() * 1000)


def _mlflow_run_exists(client, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except Exception:  # MlflowException(RESOURCE_DOES_NOT_EXIST): the store was deleted or replaced
        return False
    return True


def _quiet_by_default(environ: MutableMapping[str, str], **defaults: str) -> None:
    """Switch off a client library's own reporting (error reports, usage telemetry) unless the user chose."""
    for name, value in defaults.items():
        environ.setdefault(name, value)


_OPENERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}
