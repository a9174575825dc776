"""The channel that carries progress events from rank 0 to the driver.

On Ray: a tiny actor that reserves no CPU (``num_cpus=0`` — a 1-CPU worker group on a 2-core machine could not be
scheduled otherwise). Rank 0 calls ``put.remote(event)`` without waiting; the driver polls ``drain``.
Without Ray (the single-process path): an in-process queue with the same two methods.
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


class _EventQueue:
    """Body of the Ray actor: a list that rank 0 appends to and the driver empties."""

    def __init__(self) -> None:
        self._events: list[Any] = []

    def put(self, event: Any) -> None:
        self._events.append(event)

    def drain(self) -> list[Any]:
        events, self._events = self._events, []
        return events


def create_progress_actor():
    """Start the progress actor on the driver's node (reserving no CPU): it lives as long as the driver, so losing
    a worker node mid-run does not lose the progress of the rest of the run."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor_class = ray.remote(num_cpus=0, max_restarts=0)(_EventQueue)
    return actor_class.options(scheduling_strategy=driver_node).remote()


class ProgressSender:
    """Worker side: forwards events from rank 0 to the driver, never blocking training."""

    def __init__(self, actor: Any = None, local_channel_id: str | None = None, enabled: bool = True) -> None:
        self._actor = actor
        self._local = local_channel(local_channel_id) if local_channel_id else None
        self._enabled = enabled

    def send(self, event: Any) -> None:
        if not self._enabled:
            return
        if self._local is not None:
            self._local.put(event)
        elif self._actor is not None:
            self._actor.put.remote(event)  # fire-and-forget: no ray.get
