"""The Ray path's driver side never imports torch (the 2-worker Ray tests prove the backend connects workers)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.train")

DRIVER_SIDE = """
import json, sys
from ray.train.backend import Backend
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from rlhfctl.training.torch_backend import TorchBackendConfig
from rlhfctl.training.metrics import MetricsRecorder
from rlhfctl.progress.events import RecordingSink, StepEvent

config = TorchBackendConfig(backend="gloo")
backend = config.backend_cls()
recorder = MetricsRecorder(sys.argv[1], RecordingSink(), keep_existing=False)
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
    lean = kinds(LeanTrainer(lambda: None, owns_cluster=owns_cluster, **arguments))
    assert expected_missing <= stock  # what Ray starts by default (a renamed callback would fail here first)
    assert stock - lean == expected_missing
