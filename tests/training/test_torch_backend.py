"""The Ray path's driver side never imports torch, trackers included (the 2-worker Ray tests prove the backend
connects workers)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.train")

DRIVER_SIDE = """
import importlib.util, json, sys
from pathlib import Path
from ray.train.backend import Backend
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from rlhfctl.training.torch_backend import TorchBackendConfig
from rlhfctl.training.metrics import MetricsRecorder
from rlhfctl.training.trackers import REQUIREMENTS, TrackerRun, open_trackers
from rlhfctl.progress.events import RecordingSink, StepEvent

config = TorchBackendConfig(backend="gloo")
backend = config.backend_cls()
installed = [name for name, (module, _) in REQUIREMENTS.items() if importlib.util.find_spec(module)]
trackers = open_trackers(installed, TrackerRun(Path(sys.argv[1]), "rm", {"stage": "rm"}, resuming=False))
recorder = MetricsRecorder(sys.argv[1], RecordingSink(), keep_existing=False, trackers=trackers)
recorder.handle(StepEvent(step=1, epoch=0, split="train", metrics={"loss": 0.5}))
recorder.close()
torch_loaded = "torch" in sys.modules
import torch  # still importable afterwards
print("@@" + json.dumps({"torch_loaded": torch_loaded, "is_backend": isinstance(backend, Backend),
                         "dict": config.to_dict(), "tensor": float(torch.ones(1))}))
"""


def test_backend_config_and_metrics_recorder_do_not_import_torch(tmp_path: Path):
    completed = subprocess.run([sys.executable, "-c", DRIVER_SIDE, str(tmp_path)], capture_output=True, text=True,
                               timeout=120, stdin=subprocess.DEVNULL)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.rsplit("@@", 1)[1])
    assert report == {"torch_loaded": False, "is_backend": True, "tensor": 1.0,
                      "dict": {"backend": "gloo", "init_method": "env", "timeout_s": 1800}}
    if importlib.util.find_spec("tensorboardX") is not None:  # the tensorboard extra still writes its events
        assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["loss"] == 0.5


@pytest.mark.parametrize("owns_cluster, expected_missing", [
    (True, {"DatasetsCallback", "PlacementGroupCleanerCallback"}),
    (False, {"DatasetsCallback"}),
])
def test_lean_trainer_leaves_out_helpers_a_run_never_uses(owns_cluster, expected_missing):
    from ray.train import ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from rlhfctl.training.ray_trainer import LeanTrainer
    from rlhfctl.training.torch_backend import TorchBackendConfig

    def kinds(trainer) -> set[str]:
        return {type(callback).__name__ for callback in trainer._create_default_callbacks()}

    arguments = {"backend_config": TorchBackendConfig(), "scaling_config": ScalingConfig(num_workers=2)}
    stock = kinds(DataParallelTrainer(lambda: None, **arguments))
    lean = kinds(LeanTrainer(lambda: None, owns_cluster=owns_cluster, progress_actor_name="progress", **arguments))
    assert expected_missing <= stock  # what Ray starts by default (a renamed callback would fail here first)
    assert stock - lean == expected_missing


EMBEDDED_SESSION = """
import json, os
from rlhfctl.training.ray_cluster import ray_session
os.environ["RAY_TRAIN_METRICS_ENABLED"] = "1"  # a user's own setting is kept
with ray_session(None) as embedded:
    with ray_session(None) as reused:  # nested (the example pipeline): the same embedded instance
        inside = {name: os.environ.get(name) for name in ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER",
                                                           "RAY_TRAIN_METRICS_ENABLED")}
after = {name: os.environ.get(name) for name in inside}
print("@@" + json.dumps({"embedded": embedded, "reused": reused, "inside": inside, "after": after}))
"""


@pytest.mark.slow
def test_embedded_ray_settings_last_as_long_as_the_embedded_instance(tmp_path: Path):
    completed = subprocess.run([sys.executable, "-c", EMBEDDED_SESSION], capture_output=True, text=True, timeout=180,
                               stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.rsplit("@@", 1)[1])
    assert report["embedded"] is True and report["reused"] is True
    assert report["inside"] == {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "1"}
    assert report["after"] == {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": None, "RAY_TRAIN_METRICS_ENABLED": "1"}
