"""The pre-flight resource check: warns (never fails) when the worker group cannot fit this machine."""

from __future__ import annotations

from rlhfctl.config.resources import check_resources
from rlhfctl.config.schema import RMConfig


def _config(**training) -> RMConfig:
    general = {"base_model": "m", "output_dir": "o", "checkpoint_dir": "c"}
    if "ray_address" in training:
        general["ray_address"] = training.pop("ray_address")
    return RMConfig.model_validate({"general": general, "dataset": {"train_file": "t"}, "training": training})


def test_fits() -> None:
    assert check_resources(_config(num_training_workers=2, resources_per_worker={"CPU": 1}), cpu_count=2,
                           gpu_count=0) == []


def test_too_many_cpus_is_a_warning_with_the_numbers() -> None:
    (note,) = check_resources(_config(num_training_workers=2, resources_per_worker={"CPU": 32}), cpu_count=2,
                              gpu_count=0)
    assert note.level == "warning"
    assert "2 workers x { CPU = 32 } needs 64 CPUs but this machine has 2" in note.message


def test_cluster_address_defers_the_check() -> None:
    (note,) = check_resources(_config(num_training_workers=64, ray_address="auto"), cpu_count=2)
    assert note.level == "info" and "Ray cluster at auto" in note.message


def test_gpus_and_custom_resources() -> None:
    config = _config(num_training_workers=2, resources_per_worker={"CPU": 1, "GPU": 0.5, "accelerator": 1})
    notes = check_resources(config, cpu_count=8, gpu_count=0)
    assert [note.level for note in notes] == ["warning", "warning"]
    assert "asks for 1 GPU(s) but this machine shows 0" in notes[0].message and "accelerator" in notes[1].message
    assert [note.message for note in check_resources(config, cpu_count=8, gpu_count=1)] == [notes[1].message]


def test_auto_is_resolved_and_said() -> None:
    (note,) = check_resources(_config(), cpu_count=4, gpu_count=0)
    assert note.level == "info"
    assert note.message == "workers: 1 worker x {4 CPU} in this process, no Ray start-up (auto: one machine, 4 CPUs, no GPU)"
    (note,) = check_resources(_config(), cpu_count=4, gpu_count=2)
    assert "2 workers x {1 CPU, 1 GPU} on an embedded local Ray (auto: 2 GPUs on this machine, 1 per worker)" in note.message
    (note,) = check_resources(_config(ray_address="auto"), cpu_count=4, gpu_count=0)
    assert note.level == "warning" and "give the number of workers" in note.message
