"""The synchronisation barrier hosted in rlhfctl's controller: Ray's barrier logic behind the controller's methods,
a fresh barrier per worker-group start, retired (never ``ray.kill``-ed: the "actor" is the controller) when the
group shuts down. The real run, a worker killed and the group restarted included, is the slow test in
test_ray_trainer.py."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect

import pytest

pytest.importorskip("ray.train")

from ray.train.v2._internal.execution.checkpoint.sync_actor import SynchronizationBarrierResetError  # noqa: E402
from ray.train.v2._internal.execution.controller import TrainController  # noqa: E402

from rlhfctl.training import controller_barrier  # noqa: E402
from rlhfctl.training.controller_barrier import BARRIER_GROUP, BarrierHost  # noqa: E402


@pytest.fixture
def host(monkeypatch):
    monkeypatch.setattr(controller_barrier, "_host", None)  # the process-wide host a controller registers
    yield BarrierHost()


def test_the_audited_ray_supports_hosting_and_the_host_registers_itself(host):
    assert controller_barrier.hosting_supported()
    assert controller_barrier._host is host


def test_another_ray_keeps_rays_own_actor(monkeypatch):
    monkeypatch.setattr(controller_barrier, "_host", None)
    monkeypatch.setattr(controller_barrier, "AUDITED_RAY", "0.0.")
    assert not controller_barrier.hosting_supported()
    BarrierHost()
    assert controller_barrier._host is None  # HostedBarrierWorkerGroup then starts Ray's actor


def test_the_forwarded_methods_run_in_their_own_concurrency_group_and_collide_with_nothing_in_the_controller():
    for name in controller_barrier.FORWARDED:
        method = getattr(BarrierHost, name)
        assert inspect.iscoroutinefunction(method) and method.__ray_concurrency_group__ == BARRIER_GROUP
    own = {name for name in vars(BarrierHost) if not name.startswith("__")}
    assert not own & set(dir(TrainController))
    assert BarrierHost.concurrency_groups() == {BARRIER_GROUP: controller_barrier.BARRIER_CONCURRENCY}


def test_every_rank_gets_rank_zeros_data_through_the_hosted_barrier(host):
    async def both_ranks():
        host.open_barrier(timeout_s=None, warn_interval_s=60)
        return await asyncio.gather(host.broadcast_from_rank_zero(1, 2, "one's", "report"),
                                    host.broadcast_from_rank_zero(0, 2, "zero's", "report"))

    assert asyncio.run(both_ranks()) == ["zero's", "zero's"]


def test_retiring_the_barrier_releases_its_waiters_and_refuses_later_calls(host):
    async def a_rank_left_waiting():
        host.open_barrier(timeout_s=None, warn_interval_s=60)
        waiting = asyncio.ensure_future(host.broadcast_from_rank_zero(0, 2, "zero's", "report"))
        await asyncio.sleep(0.05)  # rank 1 never comes: its worker died
        retired = asyncio.get_running_loop().run_in_executor(None, host.retire_barrier)  # from the controller's thread
        with pytest.raises(SynchronizationBarrierResetError):
            await asyncio.wait_for(waiting, timeout=5)
        await retired
        with pytest.raises(SynchronizationBarrierResetError):
            await host.broadcast_from_rank_zero(1, 2, None, "report")  # a call after the group shut down

    asyncio.run(a_rank_left_waiting())


def test_a_new_worker_group_gets_a_fresh_barrier(host):
    async def two_groups():
        host.open_barrier(timeout_s=None, warn_interval_s=60)
        first = host._current_barrier()
        host.open_barrier(timeout_s=None, warn_interval_s=60)
        return first, host._current_barrier()

    first, second = asyncio.run(two_groups())
    assert first is not second and second.get_world_size() == 0


def test_the_start_takes_the_controllers_handle_where_ray_would_create_the_actor(host, monkeypatch):
    from ray.train.v2._internal.execution.worker_group import worker_group

    ray_actor = worker_group.SynchronizationActor
    opened = []
    monkeypatch.setattr(host, "open_barrier", lambda **options: opened.append(options))
    monkeypatch.setattr(controller_barrier.ray, "get_runtime_context",
                        lambda: type("Context", (), {"current_actor": "the controller"})())
    with controller_barrier._barrier_from(host):
        handle = worker_group.SynchronizationActor.options(label_selector={"node": "this"}).remote(
            timeout_s=None, warn_interval_s=60)
    assert handle == "the controller" and opened == [{"timeout_s": None, "warn_interval_s": 60}]
    assert worker_group.SynchronizationActor is ray_actor  # restored


class _PlacementGroup:
    def __init__(self) -> None:
        self.shut_down = False

    def shutdown(self) -> None:
        self.shut_down = True


def test_shutting_the_group_down_retires_the_barrier_and_never_kills_the_controller(host, monkeypatch):
    from ray.train.v2._internal.execution.worker_group import state

    killed_workers = []
    monkeypatch.setattr(state, "_shutdown_workers", killed_workers.append)
    monkeypatch.setattr(controller_barrier.ray, "kill", lambda actor: pytest.fail(f"ray.kill({actor!r})"))
    host.open_barrier(timeout_s=None, warn_interval_s=60)
    builder = controller_barrier._HostedBarrierStateBuilder()
    group = _PlacementGroup()
    builder.with_placement_group_handle(group).with_sync_actor("the controller").with_workers(["w0", "w1"])
    built = builder.build()
    assert isinstance(built, controller_barrier._HostedBarrierState)
    assert dataclasses.asdict(built)["sync_actor"] == "the controller"
    assert isinstance(built.replace_workers(["w1"], ["w1'"]), controller_barrier._HostedBarrierState)
    built.shutdown()
    assert killed_workers == [["w0", "w1"]] and group.shut_down and host._hosted_barrier is None


def test_a_partial_start_retires_the_barrier_too(host, monkeypatch):
    monkeypatch.setattr(controller_barrier.ray, "kill", lambda actor: pytest.fail(f"ray.kill({actor!r})"))
    host.open_barrier(timeout_s=None, warn_interval_s=60)
    builder = controller_barrier._HostedBarrierStateBuilder()
    group = _PlacementGroup()
    builder.with_placement_group_handle(group).with_sync_actor("the controller")
    builder.shutdown()  # the workers never started
    assert group.shut_down and host._hosted_barrier is None and builder.sync_actor is None
