"""``training.num_training_workers``: "auto" resolved against the machine, numbers taken as given."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhfctl.config.layout import MachineResources, resolve_config, resolve_layout, visible_gpus, with_layout
from rlhfctl.config.schema import RMConfig
from rlhfctl.errors import ConfigError

CPUS_ONLY = MachineResources(cpus=2, gpus=0)


def _config(ray_address: str | None = None, **training) -> RMConfig:
    general = {"base_model": "m", "output_dir": "o", "checkpoint_dir": "c"}
    if ray_address is not None:
        general["ray_address"] = ray_address
    return RMConfig.model_validate({"general": general, "dataset": {"train_file": "t"}, "training": training})


def test_auto_on_cpus_is_one_worker_in_process_on_every_core() -> None:
    layout = resolve_layout(_config().training, None, MachineResources(cpus=16, gpus=0))
    assert (layout.workers, layout.mode, layout.resources_per_worker) == (1, "local", {"CPU": 16.0})
    assert layout.threads_per_worker == 16
    assert layout.describe() == ("1 worker x {16 CPU} in this process, no Ray start-up "
                                 "(auto: one machine, 16 CPUs, no GPU)")


def test_auto_with_gpus_is_one_ray_worker_per_gpu() -> None:
    layout = resolve_layout(_config(resources_per_worker={"CPU": 4}).training, None, MachineResources(8, 4))
    assert (layout.workers, layout.mode, layout.resources_per_worker) == (4, "ray", {"CPU": 4.0, "GPU": 1.0})
    two_each = resolve_layout(_config(resources_per_worker={"CPU": 1, "GPU": 2}).training, None, MachineResources(8, 4))
    assert (two_each.workers, two_each.resources_per_worker["GPU"]) == (2, 2.0)
    one_gpu = resolve_layout(_config().training, None, MachineResources(8, 1))
    assert (one_gpu.workers, one_gpu.mode) == (1, "local")  # one GPU: in this process


def test_numbers_are_taken_as_given() -> None:
    for workers, address, mode in ((1, None, "local"), (2, None, "ray"), (1, "auto", "ray")):
        layout = resolve_layout(_config(num_training_workers=workers).training, address, CPUS_ONLY)
        assert (layout.workers, layout.mode, layout.resources_per_worker, layout.reason) == (
            workers, mode, {"CPU": 1.0}, "")
    assert "on the Ray cluster at auto" in resolve_layout(
        _config(num_training_workers=3).training, "auto", CPUS_ONLY).describe("auto")


def test_auto_on_a_cluster_asks_for_a_number() -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_layout(_config().training, "ray://head:10001", CPUS_ONLY)
    (issue,) = raised.value.issues
    assert issue.key == "training.num_training_workers" and "give the number of workers" in issue.message


def test_the_resolved_config_carries_the_layout() -> None:
    config = _config()
    resolved, layout = resolve_config(config, CPUS_ONLY)
    assert resolved.training.num_training_workers == 1 and resolved.training.resources_per_worker == {"CPU": 2.0}
    assert config.training.num_training_workers == "auto"  # the original is left alone
    assert with_layout(config, layout).training == resolved.training


def test_visible_gpus(tmp_path: Path) -> None:
    for name in ("0", "1"):
        (tmp_path / f"0000:0{name}:00.0").mkdir()
    assert visible_gpus(None, tmp_path) == 2
    assert visible_gpus(None, tmp_path / "missing") == 0
    assert visible_gpus("", tmp_path) == 0 and visible_gpus("-1", tmp_path) == 0
    assert visible_gpus("0,1,2", tmp_path) == 3 and visible_gpus("GPU-abc,-1,3", tmp_path) == 1
    assert MachineResources.detect().cpus >= 1
