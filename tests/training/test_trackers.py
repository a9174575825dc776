"""general.report_to: missing client libraries refused before the run, W&B offline and MLflow's local store written
by in-process runs (metrics, health alarms), resume continuing the same tracker runs, nothing sent anywhere."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from pathlib import Path

import pytest
from health_loop import events, make_job

from rlhfctl.errors import RuntimeFailure, UserError
from rlhfctl.progress.events import Notice, RecordingSink, StepEvent
from rlhfctl.training import trackers
from rlhfctl.training.launch import run_training
from rlhfctl.training.metrics import MetricsRecorder
from rlhfctl.training.trackers import TrackerRun, open_trackers, read_tracker_ids, trackers_to_open

HIGH_FROM_STEP_3 = [1.0, 1.0, 9.0, 9.0, 9.0, 9.0]  # 2 epochs of 3 steps; the KL alarm fires at step 4
needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="the wandb extra is not installed")
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("sqlalchemy")
                                  is None, reason="the mlflow extra is not installed")


@pytest.fixture
def tracker_env(monkeypatch):
    """No user settings of W&B or MLflow leak in; any attempt to open a network connection fails the test."""
    for name in list(os.environ):
        if name.startswith(("WANDB_", "MLFLOW_")):
            monkeypatch.delenv(name)

    def refuse(self, address, *args, **kwargs):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"a tracker tried to reach {address}")
        return real_connect(self, address, *args, **kwargs)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return monkeypatch


# ----------------------------------------------------------------------------------------------- before the run


def missing(*modules):
    real = importlib.util.find_spec
    return lambda name, *args: None if name in modules else real(name, *args)


def test_a_tracker_whose_package_is_missing_is_a_user_error_naming_the_extra(monkeypatch):
    monkeypatch.setattr(trackers.importlib.util, "find_spec", missing("wandb"))
    with pytest.raises(UserError) as error:
        trackers_to_open(["tensorboard", "wandb"], explicit=True, environ={})
    assert error.value.message == ("general.report_to includes wandb but the wandb package is not installed: "
                                   "pip install rlhfctl[wandb]")
    assert error.value.exit_code == 2


def test_tensorboard_by_default_is_left_out_quietly_without_tensorboardx_but_not_when_asked_for(monkeypatch):
    monkeypatch.setattr(trackers.importlib.util, "find_spec", missing("tensorboardX"))
    assert trackers_to_open(["tensorboard"], explicit=False, environ={}) == []
    with pytest.raises(UserError, match=r"pip install rlhfctl\[tensorboard\]"):
        trackers_to_open(["tensorboard"], explicit=True, environ={})


def test_mlflows_local_store_needs_sqlalchemy_unless_a_tracking_server_is_named(monkeypatch):
    monkeypatch.setattr(trackers.importlib.util, "find_spec", missing("sqlalchemy"))
    if importlib.util.find_spec("mlflow") is None:
        pytest.skip("the mlflow extra is not installed")
    with pytest.raises(UserError, match=r"needs sqlalchemy, not installed: pip install rlhfctl\[mlflow\]"):
        trackers_to_open(["mlflow"], explicit=True, environ={})
    assert trackers_to_open(["mlflow"], explicit=True, environ={"MLFLOW_TRACKING_URI": "http://mlflow:5000"}) == [
        "mlflow"]


def test_the_run_refuses_before_creating_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(trackers.importlib.util, "find_spec", missing("mlflow"))
    with pytest.raises(UserError, match="includes mlflow but the mlflow package is not installed"):
        run_training(make_job(tmp_path, [1.0] * 6, report_to=["mlflow"]))
    assert not (tmp_path / "run").exists()


def test_report_to_accepts_one_name_and_refuses_unknown_or_repeated_trackers(tmp_path):
    from pydantic import ValidationError

    from rlhfctl.config.schema import RMConfig

    def general(report_to):
        return RMConfig.model_validate({
            "general": {"base_model": "m", "output_dir": str(tmp_path / "o"), "checkpoint_dir": str(tmp_path / "c"),
                        "report_to": report_to},
            "dataset": {"train_file": str(tmp_path / "d.jsonl")}}).general

    assert general("wandb").report_to == ["wandb"]  # general.report_to=wandb on the command line
    assert general([]).report_to == []
    with pytest.raises(ValidationError, match="comet"):
        general(["comet"])
    with pytest.raises(ValidationError, match="each tracker once, found mlflow more than once"):
        general(["mlflow", "mlflow"])


# ----------------------------------------------------------------------------------------------- W&B and MLflow


def wandb_records(path) -> list[bytes]:
    """The records of a ``.wandb`` file, the format ``wandb sync`` reads: a 7-byte header (``:W&B``, magic,
    version), then 32 KiB blocks of chunks, each a 7-byte header (crc32c, length, type: 1 full, 2 first, 3 middle,
    4 last); a block's last < 7 bytes are padding."""
    import struct

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    records, pending, offset = [], b"", 7
    while offset + 7 <= len(data):
        room = 32768 - offset % 32768
        if room < 7:
            offset += room
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        chunk = data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind == 0:  # zeroed tail of the last block
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(pending)
    return records


def read_wandb_history(run_folder):
    """Every ``history`` row of an offline W&B run, as {key: value}."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_folder.glob("run-*.wandb")
    rows = []
    for data in wandb_records(path):
        record = wandb_internal_pb2.Record.FromString(data)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


@needs_wandb
@needs_mlflow
def test_wandb_offline_and_mlflow_local_get_the_metrics_and_alarms_and_resume_continues_the_same_runs(
        tmp_path, tracker_env):
    from mlflow.tracking import MlflowClient

    job = make_job(tmp_path, HIGH_FROM_STEP_3, report_to=["wandb", "mlflow"])
    sink = RecordingSink()
    with pytest.raises(RuntimeFailure, match="kl_ceiling"):
        run_training(job, progress=sink)
    ids = read_tracker_ids(tmp_path / "run")
    assert set(ids) == {"wandb", "mlflow"}
    notices = [event.message for event in sink.events if isinstance(event, Notice)]
    assert any("W&B run" in text and "offline" in text and "wandb sync" in text for text in notices)
    assert any("MLflow run" in text and "mlflow.db" in text for text in notices)

    # W&B: an offline run folder with every train and validation step and the alarm, marked failed
    (first,) = (tmp_path / "run" / "wandb").glob(f"offline-run-*-{ids['wandb']['run_id']}")
    history = read_wandb_history(first)
    assert [row["step"] for row in history if "train/kl_k1" in row] == [1, 2, 3, 4]
    assert [row["step"] for row in history if "validation/loss" in row] == [3]
    assert [(row["step"], row["health/kl_ceiling"]) for row in history if "health/kl_ceiling" in row] == [(4, 9.0)]

    # MLflow: the local store holds the same metrics, the config as params, the alarm as a tag; the run failed
    store = tmp_path / "run" / "mlflow" / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    run = client.get_run(ids["mlflow"]["run_id"])
    assert run.info.status == "FAILED" and run.data.params["training.optimizer"] == "SGD"
    assert "KL from the reference policy" in run.data.tags["health.kl_ceiling"]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/kl_k1")] == [
        (1, 1.0), (2, 1.0), (3, 9.0), (4, 9.0)]

    # --resume (the check now only warns) continues the same runs to the end
    resumed = make_job(tmp_path, HIGH_FROM_STEP_3, report_to=["wandb", "mlflow"], monitor={"kl_action": "warn"})
    assert run_training(resumed, resume=True).steps == 6
    assert read_tracker_ids(tmp_path / "run") == ids
    second = [folder for folder in (tmp_path / "run" / "wandb").glob(f"offline-run-*-{ids['wandb']['run_id']}")
              if folder != first]
    assert len(second) == 1  # the same run id: `wandb sync` appends it to the first part
    assert [row["step"] for row in read_wandb_history(second[0]) if "train/kl_k1" in row] == [5, 6]
    run = client.get_run(ids["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/kl_k1")] == [1, 2, 3, 4, 5, 6]
    assert len(client.search_runs([run.info.experiment_id])) == 1

    # --force starts over with new tracker runs; the local stores keep the earlier run beside them
    run_training(make_job(tmp_path, [1.0] * 6, report_to=["wandb", "mlflow"]), force=True)
    new_ids = read_tracker_ids(tmp_path / "run")
    assert new_ids["wandb"] != ids["wandb"] and new_ids["mlflow"] != ids["mlflow"]
    assert len(list((tmp_path / "run" / "wandb").glob(f"offline-run-*-{new_ids['wandb']['run_id']}"))) == 1
    assert len(client.search_runs([run.info.experiment_id])) == 2


@needs_mlflow
def test_mlflow_honours_the_users_tracking_uri_and_experiment(tmp_path, tracker_env):
    from mlflow.tracking import MlflowClient

    elsewhere = f"sqlite:///{tmp_path / 'team.db'}"
    tracker_env.setenv("MLFLOW_TRACKING_URI", elsewhere)
    tracker_env.setenv("MLFLOW_EXPERIMENT_NAME", "reward-models")
    run_training(make_job(tmp_path, [1.0] * 6, report_to=["mlflow"]))
    assert not (tmp_path / "run" / "mlflow").exists()
    client = MlflowClient(tracking_uri=elsewhere)
    experiment = client.get_experiment_by_name("reward-models")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "rm run" and run.data.metrics["train/loss"] >= 0


def test_a_tracker_that_fails_mid_run_is_switched_off_with_a_notice(tmp_path):
    class Broken:
        name = "broken"
        closed = None

        def log_metrics(self, step, split, metrics):
            raise OSError("disk full")

        def log_alarm(self, alarm):
            raise AssertionError("never called once switched off")

        def close(self, *, failed):
            Broken.closed = failed

    sink = RecordingSink()
    recorder = MetricsRecorder(tmp_path, sink, keep_existing=False, trackers=[Broken()])
    for step in (1, 2):
        recorder.handle(StepEvent(step=step, epoch=0, split="train", metrics={"loss": 1.0}))
    recorder.close()
    notices = [event.message for event in sink.events if isinstance(event, Notice)]
    assert notices == ["the broken tracker failed (OSError: disk full); it gets nothing more from this run "
                       "(metrics.jsonl is complete)"]
    assert Broken.closed is True and len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert [event["kind"] for event in events(tmp_path.parent, tmp_path.name)] == ["notice"]


def read_tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from tensorboardX event files (TFRecord framing: length, crc, data, crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_gets_the_metrics_and_the_alarm(tmp_path):
    if importlib.util.find_spec("tensorboardX") is None:
        pytest.skip("the tensorboard extra is not installed")
    with pytest.raises(RuntimeFailure):
        run_training(make_job(tmp_path, HIGH_FROM_STEP_3, report_to=["tensorboard"]))
    scalars = read_tensorboard_scalars(tmp_path / "run" / "tensorboard")
    assert [step for step, _ in scalars["train/kl_k1"]] == [1, 2, 3, 4]
    assert scalars["health/kl_ceiling"] == [(4, 9.0)]


def test_tensorboard_loads_without_the_optional_packages_tensorboardx_would_import(tmp_path):
    """tensorboardX imports boto3 (~0.1 s), the GCS client, Comet and torch when installed: none is used by an rlhfctl
    run, none is loaded by the writer, each stays importable afterwards, and the event file is written as before."""
    if importlib.util.find_spec("tensorboardX") is None:
        pytest.skip("the tensorboard extra is not installed")
    import subprocess
    import sys

    script = f"""
import importlib.util, json, sys
from pathlib import Path
from rlhfctl.training.trackers import TENSORBOARDX_UNUSED_IMPORTS, TrackerRun, open_trackers
[tracker] = open_trackers(["tensorboard"], TrackerRun(Path({str(tmp_path)!r}), "grpo", {{}}, resuming=False))
tracker.log_metrics(3, "train", {{"loss": 0.5}})
tracker.close(failed=False)
loaded = sorted(name for name in TENSORBOARDX_UNUSED_IMPORTS if name in sys.modules)
blocked_after = sorted(name for name in TENSORBOARDX_UNUSED_IMPORTS if name in sys.modules and sys.modules[name] is None)
import tensorboardX.record_writer
reimported = "boto3" in sys.modules if importlib.util.find_spec("boto3") is None else __import__("boto3") is not None
print(json.dumps([loaded, blocked_after, reimported]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    loaded, blocked_after, importable_after = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [] and blocked_after == []
    assert importable_after is (importlib.util.find_spec("boto3") is not None)
    assert read_tensorboard_scalars(tmp_path / "tensorboard") == {"train/loss": [(3, 0.5)]}


def test_open_trackers_with_none_writes_no_ids_file(tmp_path):
    assert open_trackers([], TrackerRun(tmp_path, "rm", {}, resuming=False)) == []
    assert not (tmp_path / "trackers.json").exists()
