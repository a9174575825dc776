"""The malloc policy: applied once, the opt-out and the user's own glibc settings honoured, a no-op off glibc, and
read back from the processes that train (the in-process layout and a Ray Train worker)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlhfctl.config.schema import RMConfig
from rlhfctl.errors import UserError
from rlhfctl.training import allocator
from rlhfctl.training.allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, TRAINING_POLICY
from rlhfctl.training.job import TrainingJob
from rlhfctl.training.launch import run_training

from allocator_probe import PROBE_BYTES, NoPayload, probe_loop, probe_loop_with_release_requested

HERE = Path(__file__).resolve().parent
needs_glibc = pytest.mark.skipif(allocator.load_glibc() is None, reason="not a glibc system")


class FakeGlibc:
    def __init__(self, accepts: bool = True) -> None:
        self.calls: list[tuple] = []
        self.accepts = accepts

    def mallopt(self, parameter: int, value: int) -> bool:
        self.calls.append(("mallopt", parameter, value))
        return self.accepts

    def malloc_trim(self) -> bool:
        self.calls.append(("malloc_trim",))
        return True


RELEASE = {"RLHFCTL_MALLOC": "release"}  # the policy is opt-in


@pytest.fixture
def fresh_process(monkeypatch):
    """The module as a process that has not applied the policy yet."""
    monkeypatch.setattr(allocator, "_applied", None)


def test_applies_fixed_thresholds_once_per_process(fresh_process):
    glibc = FakeGlibc()
    assert allocator.apply_training_policy(RELEASE, glibc=lambda: glibc) == "applied"
    assert allocator.apply_training_policy(RELEASE, glibc=lambda: glibc) == "applied"
    assert glibc.calls == [("mallopt", M_MMAP_THRESHOLD, TRAINING_POLICY.mmap_threshold_bytes),
                           ("mallopt", M_TRIM_THRESHOLD, TRAINING_POLICY.trim_threshold_bytes)]
    assert allocator.release_free_memory(glibc=lambda: glibc)
    assert glibc.calls[-1] == ("malloc_trim",)


def test_threshold_is_below_the_mid_sized_blocks_glibc_would_keep():
    assert TRAINING_POLICY.mmap_threshold_bytes <= PROBE_BYTES  # the probe below relies on it
    assert TRAINING_POLICY.trim_threshold_bytes >= TRAINING_POLICY.mmap_threshold_bytes


@pytest.mark.parametrize(("environ", "outcome"), [
    ({}, "not requested"),
    ({"RLHFCTL_MALLOC": "default"}, "not requested"),
    ({"RLHFCTL_MALLOC": " Default "}, "not requested"),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "glibc settings in the environment"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "glibc settings in the environment"),
])
def test_opt_out_and_the_users_glibc_settings_leave_malloc_alone(fresh_process, environ, outcome):
    glibc = FakeGlibc()
    assert allocator.apply_training_policy(environ, glibc=lambda: glibc) == outcome
    assert not allocator.release_free_memory(glibc=lambda: glibc)
    assert glibc.calls == []


def test_explicit_release_and_unrelated_tunables_apply_it(fresh_process):
    glibc = FakeGlibc()
    environ = {"RLHFCTL_MALLOC": "release", "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}
    assert allocator.apply_training_policy(environ, glibc=lambda: glibc) == "applied"


def test_an_fsdp_worker_on_cpu_trims_whatever_the_policy(fresh_process):
    """FSDP on CPU churns the heap every step: its trims run with glibc's defaults too (and stay a no-op off
    glibc)."""
    glibc = FakeGlibc()
    assert allocator.apply_training_policy({}, glibc=lambda: glibc) == "not requested"
    assert not allocator.release_free_memory(glibc=lambda: glibc)
    assert allocator.release_free_memory(glibc=lambda: glibc, sharded_on_cpu=True)
    assert glibc.calls == [("malloc_trim",)]
    assert not allocator.release_free_memory(glibc=lambda: None, sharded_on_cpu=True)


def test_off_glibc_it_is_a_no_op(fresh_process):
    assert allocator.apply_training_policy(RELEASE, glibc=lambda: None) == "not glibc"
    assert not allocator.release_free_memory(glibc=lambda: None)


def test_a_refused_mallopt_is_reported_and_no_trim_follows(fresh_process):
    glibc = FakeGlibc(accepts=False)
    assert allocator.apply_training_policy(RELEASE, glibc=lambda: glibc) == "mallopt refused"
    assert not allocator.release_free_memory(glibc=lambda: glibc)


def test_an_unknown_value_is_a_user_error_naming_the_variable(fresh_process):
    with pytest.raises(UserError) as error:
        allocator.apply_training_policy({"RLHFCTL_MALLOC": "aggressive"}, glibc=lambda: FakeGlibc())
    assert "RLHFCTL_MALLOC='aggressive'" in error.value.message and "default, release" in error.value.message


def test_load_glibc_finds_glibc_where_python_says_it_runs_on_it():
    import platform

    assert (allocator.load_glibc() is not None) == (platform.libc_ver()[0] == "glibc")


@pytest.mark.parametrize(("value", "mmapped"), [("release", "True"), ("default", "False")])
@needs_glibc
def test_a_real_process_mmaps_mid_sized_blocks_only_under_the_policy(value, mmapped):
    code = ("from rlhfctl.training import allocator; import allocator_probe; allocator.apply_training_policy(); "
            "print(allocator_probe.mmaps_mid_sized_blocks())")
    env = {"PATH": "/usr/bin:/bin", "RLHFCTL_MALLOC": value,
           "PYTHONPATH": f"{Path(allocator.__file__).parents[2]}:{HERE}"}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert completed.stdout.strip() == mmapped, completed.stderr


# ----------------------------------------------------------------------------------------------- training processes


def _probe_job(tmp_path, workers: int, train_loop=probe_loop) -> TrainingJob:
    config = RMConfig.model_validate({
        "general": {"base_model": "unused", "output_dir": str(tmp_path / "run"),
                    "checkpoint_dir": str(tmp_path / "model")},
        "dataset": {"train_file": str(tmp_path / "unused.jsonl")},
        "training": {"num_training_workers": workers, "max_failures": 0},
    })
    return TrainingJob(stage="rm", config=config, train_loop=train_loop, payload=NoPayload(), total_steps=1,
                       samples_per_step=1)


@needs_glibc
def test_the_in_process_layout_applies_it(fresh_process, tmp_path, monkeypatch):
    monkeypatch.setenv("RLHFCTL_MALLOC", "release")
    job = _probe_job(tmp_path, workers=1)
    assert job.mode == "local"
    run_training(job, memory_check=False)
    # "applied" only after glibc's mallopt accepted both thresholds. What they do to glibc is checked in a fresh
    # process (test_a_real_process_mmaps_mid_sized_blocks_only_under_the_policy): in this long-lived test process
    # an arena may hold a free chunk from earlier tests large enough to serve the probe's block from the heap
    # whatever the threshold (glibc only mmaps when no free chunk fits), so the probe's answer would depend on
    # test order.
    assert allocator._applied == "applied"


def test_a_bad_value_stops_the_run_before_any_worker_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHFCTL_MALLOC", "on")
    with pytest.raises(UserError, match="RLHFCTL_MALLOC"):
        run_training(_probe_job(tmp_path, workers=2), memory_check=False)
    assert not (tmp_path / "run").exists()


@needs_glibc
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_ray_train_worker_applies_it(ray_cluster, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules["allocator_probe"])  # Ray's processes cannot import it
    job = _probe_job(tmp_path, workers=2, train_loop=probe_loop_with_release_requested)
    assert job.mode == "ray"
    assert run_training(job, memory_check=False).final_metrics["mmaps_mid_sized_blocks"] == 1.0
