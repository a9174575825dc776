"""LeanTrainer on the embedded Ray: the controller and its workers start without a runtime env (so Ray can hand them
its idle worker processes) only while every Ray Train setting reaches them by inheritance, and the controller hosts
the workers' synchronisation barrier; a setting changed after Ray started still reaches the workers through Ray's
runtime env (and Ray's own synchronisation actor). Either way rank 0's progress events reach the driver (through the
controller, or through a progress actor of their own)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.train")

PROPAGATED = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # one of the settings Ray Train propagates


@pytest.mark.parametrize(("inherited", "driver_now", "expected"), [
    (None, {}, False),  # no embedded Ray (a joined cluster, or a Ray someone else started)
    ({"RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": "0"}, {}, True),
    ({"RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": "0", PROPAGATED: "30"}, {PROPAGATED: "30"}, True),
    ({"RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": "0"}, {PROPAGATED: "30"}, False),  # set after Ray started
    ({"RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": "0", PROPAGATED: "60"}, {PROPAGATED: "30"}, False),  # changed since
    ({}, {}, False),  # Ray Train's default for its controller is not in the inherited environment
])
def test_settings_count_as_inherited_only_when_the_embedded_ray_started_with_them(monkeypatch, inherited,
                                                                                  driver_now, expected):
    from ray.train.v2._internal.constants import ENV_VARS_TO_PROPAGATE

    from rlhfctl.training import ray_trainer

    for name in ENV_VARS_TO_PROPAGATE:
        monkeypatch.delenv(name, raising=False)
    for name, value in driver_now.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(ray_trainer, "embedded_ray_environment", lambda: inherited)
    assert ray_trainer.settings_inherited_from_embedded_ray() is expected


def test_the_inheriting_worker_group_passes_on_only_the_users_runtime_env(monkeypatch):
    from ray.train.v2._internal.execution.worker_group import WorkerGroup

    from rlhfctl.training.ray_trainer import InheritedEnvironmentController, InheritedEnvironmentWorkerGroup

    monkeypatch.setenv(PROPAGATED, "30")
    custom = {"env_vars": {"MINE": "1"}}
    ray_way = WorkerGroup._get_worker_runtime_env(custom)["env_vars"]
    assert {"MINE": "1", PROPAGATED: "30"}.items() <= ray_way.items()  # and whatever else the driver has set
    assert InheritedEnvironmentWorkerGroup._get_worker_runtime_env(custom) == custom
    assert InheritedEnvironmentWorkerGroup._get_worker_runtime_env({}) == {}
    assert InheritedEnvironmentController.worker_group_cls is InheritedEnvironmentWorkerGroup


EMBEDDED_RUN = """
import json, os, sys
from pathlib import Path

import ray
from ray.train import FailureConfig, RunConfig, ScalingConfig

from rlhfctl.training.progress_actor import ProgressSender, new_progress_actor_name
from rlhfctl.training.ray_cluster import ray_session
from rlhfctl.training.ray_trainer import LeanTrainer, settings_inherited_from_embedded_ray

root = Path(sys.argv[1])


def train_loop(config):
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    marker = Path(config["marker"])
    ProgressSender(actor_name=config["progress"], enabled=rank == 0).send(("started", marker.exists()))
    if config["kill"] and rank == 1 and not marker.exists():  # the first worker group loses a worker
        marker.touch()
        os._exit(1)
    from ray.train.collective import broadcast_from_rank_zero
    from ray.train.v2._internal.execution.context import get_train_context

    context = get_train_context()  # the barrier: the controller's own (hosted) or Ray's actor
    hosted = context.get_synchronization_actor()._ray_actor_id == context.controller_actor._ray_actor_id
    return {"runtime_env": ray.get_runtime_context().runtime_env, "timeout": os.environ.get(config["variable"]),
            "broadcast": broadcast_from_rank_zero(f"rank {rank}'s"), "hosted": hosted}


def fit(name, kill):
    progress, marker = new_progress_actor_name(), root / f"{name}.killed"
    trainer = LeanTrainer(train_loop, owns_cluster=True, progress_actor_name=progress,
                          train_loop_config={"marker": str(marker), "kill": kill, "variable": sys.argv[2],
                                             "progress": progress},
                          scaling_config=ScalingConfig(num_workers=2),
                          run_config=RunConfig(name=name, storage_path=str(root),
                                               failure_config=FailureConfig(max_failures=1)))
    result = trainer.fit()  # nothing drained while it runs: every event is still there afterwards
    return {"inherited": settings_inherited_from_embedded_ray(), **result.return_value,
            "killed": marker.exists(), "progress": trainer.drain_progress(), "again": trainer.drain_progress()}


os.environ[sys.argv[2]] = "45"
with ray_session(None):
    runs = {"inherited": fit("inherited", kill=True)}
    os.environ[sys.argv[2]] = "50"  # changed after Ray started: only a runtime env can carry it
    runs["propagated"] = fit("propagated", kill=False)
print("@@" + json.dumps(runs))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_embedded_ray_workers_inherit_the_settings_and_still_restart_after_a_failure(tmp_path: Path):
    completed = subprocess.run([sys.executable, "-c", EMBEDDED_RUN, str(tmp_path), PROPAGATED], capture_output=True,
                               text=True, timeout=280, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    runs = json.loads(completed.stdout.rsplit("@@", 1)[1])
    assert runs["inherited"]["inherited"] is True and runs["inherited"]["killed"] is True
    assert runs["inherited"]["timeout"] == "45" and not runs["inherited"]["runtime_env"].get("env_vars")
    # the restarted group's barrier (a fresh one in the same controller) works; Ray's own actor where Ray starts it
    assert runs["inherited"]["hosted"] is True and runs["inherited"]["broadcast"] == "rank 0's"
    assert runs["propagated"]["hosted"] is False and runs["propagated"]["broadcast"] == "rank 0's"
    assert runs["propagated"]["inherited"] is False
    assert runs["propagated"]["timeout"] == "50"
    assert runs["propagated"]["runtime_env"]["env_vars"][PROPAGATED] == "50"
    # rank 0's events, in order, drained after fit() returned and only once: the last from the group after the kill
    assert runs["inherited"]["progress"][-1] == ["started", True] and runs["inherited"]["again"] == []
    assert runs["propagated"]["progress"] == [["started", False]] and runs["propagated"]["again"] == []
