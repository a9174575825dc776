"""The channel that carries progress events from rank 0 to the driver.

On Ray: a named actor with the methods of :class:`ProgressQueue` — Ray Train's controller where rlhfctl starts it
itself (:mod:`rlhfctl.training.ray_trainer`, the embedded Ray), otherwise a tiny actor of its own that reserves no
CPU (``num_cpus=0`` — a 1-CPU worker group on a 2-core machine could not be scheduled otherwise). Rank 0 looks it
up by name and calls ``put_progress.remote(event)`` without waiting; the driver polls ``drain_progress``.
Without Ray (the single-process path): an in-process queue (:class:`LocalChannel`).
"""

from __future__ import annotations

import queue
import threading
import uuid
from typing import Any

_LOCAL_CHANNELS: dict[str, "LocalChannel"] = {}
_LOCAL_LOCK = threading.Lock()


class LocalChannel:
    """In-process event queue (the driver and the training function share one process)."""

    def __init__(self) -> None:
        self.channel_id = uuid.uuid4().hex
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        with _LOCAL_LOCK:
            _LOCAL_CHANNELS[self.channel_id] = self

    def put(self, event: Any) -> None:
        self._queue.put(event)

    def drain(self) -> list[Any]:
        events = []
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                return events

    def close(self) -> None:
        with _LOCAL_LOCK:
            _LOCAL_CHANNELS.pop(self.channel_id, None)


def local_channel(channel_id: str) -> LocalChannel | None:
    with _LOCAL_LOCK:
        return _LOCAL_CHANNELS.get(channel_id)


def new_progress_actor_name() -> str:
    """A name for one run's progress actor, unique in the Ray namespace the run's processes share."""
    return f"rlhfctl-progress-{uuid.uuid4().hex}"


class ProgressQueue:
    """The progress methods of a Ray actor: a list that rank 0 appends to and the driver empties. Mixed into Ray
    Train's controller (an asyncio actor: the methods are coroutines, each runs whole on its event loop)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress_events: list[Any] = []

    async def put_progress(self, event: Any) -> None:
        self._progress_events.append(event)

    async def drain_progress(self) -> list[Any]:
        events, self._progress_events = self._progress_events, []
        return events


class _EventQueue(ProgressQueue):
    """The progress actor where no controller of rlhfctl's hosts the queue."""


def create_progress_actor(name: str):
    """Start the progress actor ``name`` on the driver's node (reserving no CPU) and wait until rank 0 can look it
    up: it lives as long as the driver, so losing a worker node mid-run does not lose the progress of the rest."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor_class = ray.remote(num_cpus=0, max_restarts=0)(_EventQueue)
    actor = actor_class.options(scheduling_strategy=driver_node, name=name).remote()
    ray.get(actor.__ray_ready__.remote())
    return actor


class ProgressSender:
    """Worker side: forwards events from rank 0 to the driver, never blocking training. ``actor_name``: the run's
    progress actor (looked up on the first event); ``local_channel_id``: the in-process channel."""

    def __init__(self, actor_name: str | None = None, local_channel_id: str | None = None,
                 enabled: bool = True) -> None:
        self._actor_name = actor_name
        self._actor: Any = None
        self._local = local_channel(local_channel_id) if local_channel_id else None
        self._enabled = enabled

    def send(self, event: Any) -> None:
        if not self._enabled:
            return
        if self._local is not None:
            self._local.put(event)
        elif self._actor_name is not None:
            if self._actor is None:
                import ray

                self._actor = ray.get_actor(self._actor_name)
            self._actor.put_progress.remote(event)  # fire-and-forget: no ray.get
