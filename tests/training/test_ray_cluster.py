"""How long a run may wait for its workers' resources, in Ray Train's start attempts."""

from __future__ import annotations

import gc
import os
import sys

import pytest

from rlhfctl.training import collector
from rlhfctl.training.ray_cluster import WORKER_START_TIMEOUT_ENV, worker_start_retries


@pytest.mark.parametrize(("wait_minutes", "timeout", "retries"), [
    (10, None, 9),       # ten 60-s attempts: the first and nine retries
    (0, None, 0),        # one attempt, no retry
    (0.5, None, 0),      # rounded up to a whole attempt
    (1.01, None, 1),
    (2, "30", 3),        # four 30-s attempts
    (0.1, "2", 2),       # 6 s in 2-s attempts
    (1, "nonsense", 0),  # a malformed value is Ray's default
    (1, "-5", 0),
])
def test_retries_fit_the_wait_in_start_attempts(monkeypatch, wait_minutes, timeout, retries):
    if timeout is None:
        monkeypatch.delenv(WORKER_START_TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(WORKER_START_TIMEOUT_ENV, timeout)
    assert worker_start_retries(wait_minutes) == retries


class FakeRay:
    """The three calls ray_session makes, counted."""

    def __init__(self) -> None:
        self.running, self.inits, self.shutdowns = False, 0, 0

    def is_initialized(self) -> bool:
        return self.running

    def init(self, **_settings) -> None:
        self.running, self.inits = True, self.inits + 1

    def shutdown(self) -> None:
        self.running, self.shutdowns = False, self.shutdowns + 1


def test_shared_sessions_start_ray_once_and_only_when_a_session_needs_it(monkeypatch):
    from rlhfctl.training import ray_cluster

    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with ray_cluster.shared_ray_sessions():
        assert fake.inits == 0  # nothing started until a stage runs on Ray
        for _ in range(3):
            with ray_cluster.ray_session(None) as owns:
                assert owns and fake.running
        assert (fake.inits, fake.shutdowns) == (1, 0)  # kept up for the stages after the first
    assert (fake.inits, fake.shutdowns, fake.running) == (1, 1, False)
    assert "RAY_AUTH_MODE" not in os.environ  # the embedded Ray's settings are undone with it
    with ray_cluster.ray_session(None):  # outside the block: a session stops what it started
        pass
    assert (fake.inits, fake.shutdowns) == (2, 2)


def test_the_embedded_rays_environment_is_the_drivers_when_it_started(monkeypatch):
    from rlhfctl.training import ray_cluster

    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setenv("RLHFCTL_TEST_SETTING", "before")
    assert ray_cluster.embedded_ray_environment() is None
    with ray_cluster.ray_session(None):
        os.environ["RLHFCTL_TEST_SETTING"] = "after"  # Ray's processes still have what they started with
        inherited = ray_cluster.embedded_ray_environment()
        assert inherited["RLHFCTL_TEST_SETTING"] == "before"
        assert inherited["RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"] == "0"  # Ray Train's controller default, inherited
        assert int(inherited[ray_cluster.STARTUP_CONCURRENCY_ENV]) >= max(os.cpu_count() or 1, 4)
        assert inherited[ray_cluster.IDLE_WORKERS_ENV] == str((os.cpu_count() or 1) + 1)  # + the controller's
        assert inherited["__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"] == "rlhfctl.training.ray_cluster.preload_ray_train"
    assert "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR" not in os.environ  # undone with the embedded Ray
    assert ray_cluster.embedded_ray_environment() is None
    with ray_cluster.ray_session("auto"):  # a joined cluster's processes never had this process's environment
        assert ray_cluster.embedded_ray_environment() is None


EMBEDDED_PROCESSES = """
import json, psutil, ray
from rlhfctl.training.ray_cluster import ray_session

def commands():
    return [" ".join(child.cmdline()) for child in psutil.Process().children(recursive=True)]

def collecting():
    import gc
    return gc.isenabled()

with ray_session(None):
    inside = commands()
    answer = ray.get(ray.remote(num_cpus=0)(lambda: 42).remote())
    collecting_at_start = ray.get(ray.remote(num_cpus=0)(collecting).remote())
print("@@" + json.dumps({"inside": inside, "answer": answer, "after": commands(), "collecting": collecting_at_start}))
"""


@pytest.mark.slow
def test_an_embedded_ray_runs_without_the_head_processes_it_never_uses(tmp_path):
    import json
    import subprocess

    completed = subprocess.run([sys.executable, "-c", EMBEDDED_PROCESSES], capture_output=True, text=True,
                               timeout=180, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.rsplit("@@", 1)[1])
    inside = " ".join(report["inside"])
    assert "gcs_server" in inside and "raylet" in inside  # the cluster itself runs
    for script in ("autoscaler/_private/monitor.py", "log_monitor.py", "dashboard/dashboard.py"):
        assert script not in inside
    assert report["answer"] == 42 and report["after"] == []  # tasks run; shutdown leaves nothing behind
    assert report["collecting"] is False  # a worker process starts up without cyclic collection (the setup hook)


def test_the_preload_never_raises(monkeypatch):
    """Ray ends a worker process whose setup hook raises: an import that fails is left to the actor that needs it."""
    from rlhfctl.training import ray_cluster

    monkeypatch.setitem(sys.modules, "ray.train", None)  # "import ray.train" raises ImportError
    try:
        ray_cluster.preload_ray_train()
    finally:
        collector.resume_without_collecting()
        gc.unfreeze()


def test_the_preload_pauses_the_collector_until_the_process_starts_its_loop(monkeypatch):
    from rlhfctl.training import ray_cluster

    monkeypatch.setitem(sys.modules, "ray.train", None)
    gc.enable()
    try:
        ray_cluster.preload_ray_train()
        assert not gc.isenabled()
        assert collector._deadline is not None  # and at the latest after START_UP_WITHOUT_COLLECTION_S
        collector.start_the_loop()  # what a Train worker does before its first step
        assert gc.isenabled()
    finally:
        collector.resume_without_collecting()
        gc.unfreeze()


PRESTARTED_PROCESS_KEPT = """
import json, os, time, psutil, ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from rlhfctl.training.ray_cluster import ray_session

def worker_processes():  # a worker's title is "ray::IDLE" once it has connected (the agents are "ray::...Agent")
    commands = {child.pid: " ".join(child.cmdline()) for child in psutil.Process().children(recursive=True)
                if child.name() != "raylet"}  # the raylet's own command line names default_worker.py
    return {pid for pid, command in commands.items()
            if (command.startswith("ray::") and "Agent" not in command) or "default_worker.py" in command}

@ray.remote
class Where:
    def pid(self):
        return os.getpid()

cpus = os.cpu_count()
with ray_session(None):
    deadline = time.monotonic() + 60
    while len(worker_processes()) < cpus + 1 and time.monotonic() < deadline:  # one per CPU + the controller's
        time.sleep(0.1)
    prestarted = worker_processes()
    group = placement_group([{"CPU": 1.0}] * cpus)  # what a worker group of one worker per CPU reserves
    ray.get(group.ready())
    time.sleep(3)  # the raylet ends idle processes above its limit after ~1 s idle
    controller = Where.options(num_cpus=0).remote()
    workers = [Where.options(num_cpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(group, bundle))
               .remote() for bundle in range(cpus)]
    pids = ray.get([actor.pid.remote() for actor in [controller, *workers]])
print("@@" + json.dumps({"prestarted": sorted(prestarted), "actors": pids}))
"""


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one prestarted process per CPU: needs 2")
def test_the_embedded_ray_keeps_its_prestarted_processes_when_a_worker_group_reserves_the_cpus(tmp_path):
    """Ray Train's controller (no CPUs of its own) and a worker group of one worker per CPU take the processes the
    raylet prestarted at ray.init (one per CPU and one more) instead of new interpreters, also after the worker
    group's placement group reserved every CPU (Ray's default idle limit, the CPUs available, would end them then)."""
    import json
    import subprocess

    completed = subprocess.run([sys.executable, "-c", PRESTARTED_PROCESS_KEPT], capture_output=True, text=True,
                               timeout=180, stdin=subprocess.DEVNULL, cwd=tmp_path, check=False)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.rsplit("@@", 1)[1])
    assert len(report["prestarted"]) == (os.cpu_count() or 1) + 1
    assert len(set(report["actors"])) == len(report["actors"])
    assert set(report["actors"]) <= set(report["prestarted"]), report
