"""Ray Train's synchronisation barrier kept in the controller's process on the embedded Ray: one process fewer.

Each start of Ray Train's worker group (``WorkerGroup._start_impl``) creates a ``SynchronizationActor``: a
``num_cpus=0`` asyncio actor whose ``broadcast_from_rank_zero`` is the barrier behind ``ray.train.report`` with a
checkpoint (and Ray Train's collectives). As its own actor it takes a worker process, imports Ray Train there and
sets up an actor (~1 CPU-second on this 2-core machine, while the controller and the Train workers start), and it
takes the second of the two processes the raylet prestarts, which a Train worker could otherwise use. rlhfctl's
controller on the embedded Ray (``ray_trainer.InheritedEnvironmentController``, started by rlhfctl itself) already
hosts the progress events for the same reason; with :class:`BarrierHost` it hosts the barrier too:

- the barrier is an instance of Ray's own ``SynchronizationActor`` class (its Python class, not an actor), so its
  logic is Ray's; the controller forwards the three methods Ray Train calls on it (``broadcast_from_rank_zero``
  from the workers; ``reset`` and ``set_required_ranks`` from the worker group) in a concurrency group of its own
  (:data:`BARRIER_GROUP`): Ray runs each concurrency group of an asyncio actor on its own event loop, so the
  controller's blocking polls never hold a barrier call up, and the worker group's own ``ray.get`` of
  ``reset``/``set_required_ranks`` on the controller's handle does not wait on the loop it blocks;
- :class:`HostedBarrierWorkerGroup` starts the worker group with the controller's handle where Ray would create
  the actor (``SynchronizationActor`` in ``worker_group.py`` stands for :class:`_BarrierFromController` during that
  one call), a fresh barrier per worker-group start; where Ray would ``ray.kill`` the actor as the group shuts down
  (``state._shutdown_sync_actor``, after the workers are killed), the barrier is retired instead: anything still
  waiting on it is released with Ray's ``SynchronizationBarrierResetError``, and a call that arrives before the next
  start gets that error too, as a call to a killed actor gets an error. The controller itself lives on, so a worker
  group restarted after a failure gets a new barrier in the same process.

Only on the Ray version this was read against (:data:`AUDITED_RAY`) and only when every name it relies on has the
shape it expects (:func:`hosting_supported`); otherwise the worker group creates Ray's actor as usual. A joined
cluster never gets here: there Ray starts its own controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import ray
from ray.train.v2._internal.execution.checkpoint import sync_actor as ray_sync_actor
from ray.train.v2._internal.execution.worker_group import state as ray_worker_group_state
from ray.train.v2._internal.execution.worker_group import worker_group as ray_worker_group
from ray.train.v2._internal.execution.worker_group.state import WorkerGroupState
from ray.train.v2._internal.execution.worker_group.state import WorkerGroupStateBuilder
from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup

AUDITED_RAY = "2.60."  # the Ray release family whose worker group, state and barrier this module was read against
BARRIER_GROUP = "rlhfctl-barrier"
BARRIER_CONCURRENCY = 1000  # as many waiting calls as Ray's own asyncio actor allows (its default)
# The barrier methods Ray Train calls on the synchronisation actor (the rest are getters for Ray's tests)
FORWARDED = ("broadcast_from_rank_zero", "reset", "set_required_ranks")
# Process state: the controller of this process that hosts the barrier (one controller per actor process)
_host: BarrierHost | None = None


def hosting_supported() -> bool:
    """Whether this Ray's worker group can take the controller's barrier: the audited release, the actor class
    where ``WorkerGroup._start_impl`` looks it up, the state's shutdown steps, and the barrier's methods."""
    try:
        barrier_class = ray_sync_actor.SynchronizationActor.__ray_actor_class__
        starting = inspect.getsource(WorkerGroup._start_impl)
        stopping = inspect.getsource(WorkerGroupState.shutdown) + inspect.getsource(WorkerGroupStateBuilder.shutdown)
    except (AttributeError, OSError, TypeError):
        return False
    return (ray.__version__.startswith(AUDITED_RAY)
            and ray_worker_group.SynchronizationActor is ray_sync_actor.SynchronizationActor
            and "SynchronizationActor.options(" in starting and "with_sync_actor(sync_actor)" in starting
            and stopping.count("_shutdown_sync_actor(self.sync_actor)") == 2
            and callable(getattr(ray_worker_group_state, "_shutdown_workers", None))
            and all(inspect.iscoroutinefunction(getattr(barrier_class, name, None)) for name in FORWARDED)
            and [field.name for field in dataclasses.fields(WorkerGroupState)]
            == ["start_time", "placement_group_handle", "workers", "sync_actor"])


class BarrierHost:
    """Mixin for Ray Train's controller (an asyncio actor): the worker group's synchronisation barrier, in the
    controller's process. Start the actor with ``concurrency_groups=BarrierHost.concurrency_groups()``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        global _host
        self._hosted_barrier: Any = None  # Ray's SynchronizationActor class, instantiated per worker-group start
        self._hosted_barrier_loop: asyncio.AbstractEventLoop | None = None  # BARRIER_GROUP's loop, once used
        self._hosted_barrier_lock = threading.Lock()
        super().__init__(*args, **kwargs)
        if hosting_supported():
            _host = self

    @staticmethod
    def concurrency_groups() -> dict[str, int]:
        return {BARRIER_GROUP: BARRIER_CONCURRENCY}

    def open_barrier(self, **options: Any) -> None:
        """A new barrier for a starting worker group (``options``: Ray's, ``timeout_s`` and ``warn_interval_s``);
        the previous group's is retired."""
        fresh = ray_sync_actor.SynchronizationActor.__ray_actor_class__(**options)
        with self._hosted_barrier_lock:
            retired, self._hosted_barrier = self._hosted_barrier, fresh
        self._release(retired)

    def retire_barrier(self) -> None:
        """The worker group is gone: release whatever still waits on its barrier, refuse calls until the next."""
        with self._hosted_barrier_lock:
            retired, self._hosted_barrier = self._hosted_barrier, None
        self._release(retired)

    def _release(self, barrier: Any) -> None:
        loop = self._hosted_barrier_loop
        if barrier is not None and loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(barrier.reset(), loop)  # on the loop its waiters belong to

    def _current_barrier(self) -> Any:
        self._hosted_barrier_loop = asyncio.get_running_loop()
        with self._hosted_barrier_lock:
            barrier = self._hosted_barrier
        if barrier is None:
            raise ray_sync_actor.SynchronizationBarrierResetError(
                "the worker group this barrier belonged to has shut down")
        return barrier

    @ray.method(concurrency_group=BARRIER_GROUP)
    async def broadcast_from_rank_zero(self, *args: Any, **kwargs: Any) -> Any:
        return await self._current_barrier().broadcast_from_rank_zero(*args, **kwargs)

    @ray.method(concurrency_group=BARRIER_GROUP)
    async def reset(self) -> None:
        await self._current_barrier().reset()

    @ray.method(concurrency_group=BARRIER_GROUP)
    async def set_required_ranks(self, ranks: Any) -> bool:
        return await self._current_barrier().set_required_ranks(ranks)


class _BarrierFromController:
    """What ``WorkerGroup._start_impl`` finds under ``SynchronizationActor`` while a hosting controller starts its
    worker group: ``.options(...).remote(timeout_s=..., warn_interval_s=...)`` opens a barrier in the controller and
    returns the controller's own handle, which the workers then call as Ray's actor."""

    def __init__(self, host: BarrierHost) -> None:
        self._host = host

    def options(self, **_placement: Any) -> _BarrierFromController:  # the driver's node: the controller's own
        return self

    def remote(self, **options: Any) -> Any:
        self._host.open_barrier(**options)
        return ray.get_runtime_context().current_actor


@dataclasses.dataclass(frozen=True)
class _HostedBarrierState(WorkerGroupState):
    """Ray's worker-group state whose shutdown retires the barrier instead of killing its "actor" (the
    controller)."""

    def shutdown(self) -> None:  # Ray's steps, with retire_barrier for _shutdown_sync_actor
        ray_worker_group_state._shutdown_workers(self.workers)
        _retire_hosted_barrier()
        self.placement_group_handle.shutdown()

    def replace_workers(self, old_workers: list, new_workers: list) -> _HostedBarrierState:
        return _hosted(super().replace_workers(old_workers, new_workers))


class _HostedBarrierStateBuilder(WorkerGroupStateBuilder):
    def build(self) -> _HostedBarrierState:
        return _hosted(super().build())

    def shutdown(self) -> None:
        if self.sync_actor is not None:
            self.sync_actor = None
            _retire_hosted_barrier()
        super().shutdown()


def _hosted(state: WorkerGroupState) -> _HostedBarrierState:
    return _HostedBarrierState(**{field.name: getattr(state, field.name) for field in dataclasses.fields(state)})


def _retire_hosted_barrier() -> None:
    if _host is not None:
        _host.retire_barrier()


class HostedBarrierWorkerGroup(WorkerGroup):
    """Ray Train's worker group; in a process whose controller is a :class:`BarrierHost`, its synchronisation
    barrier is the controller's (otherwise Ray's actor, as usual)."""

    def _start(self) -> None:  # WorkerGroup._start with the controller's barrier and state builder
        host = _host
        if host is None:
            super()._start()
            return
        builder = _HostedBarrierStateBuilder()
        try:
            with _barrier_from(host):
                self._start_impl(builder)
        except Exception:
            if not self.has_started():
                builder.shutdown()  # a partial start: its workers, the barrier, the placement group
            raise
        assert self.has_started(), "Worker group failed to start."


@contextlib.contextmanager
def _barrier_from(host: BarrierHost) -> Iterator[None]:
    """Within the block, ``WorkerGroup._start_impl`` (same process) takes the barrier from ``host``."""
    original = ray_worker_group.SynchronizationActor
    ray_worker_group.SynchronizationActor = _BarrierFromController(host)
    try:
        yield
    finally:
        ray_worker_group.SynchronizationActor = original
