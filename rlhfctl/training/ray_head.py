"""The embedded Ray's head node without the head processes an rlhfctl run never uses.

``ray.init(address="local")`` starts, besides the GCS and the raylet (with its dashboard and runtime-env agents),
three Python processes that a local, single-user rlhfctl Ray has no use for:

- the autoscaler monitor: a local Ray has no autoscaler;
- the log monitor: it streams worker logs to drivers, and the embedded Ray runs with ``log_to_driver=False``;
- the API server: with ``include_dashboard=False`` it loads only the usage-stats module (usage stats are off), yet
  ``ray.init`` waits until it has published its address before it returns.

Each costs ~0.5-1 CPU-second to start (Ray's imports) and 50-90 MB; on a 2-core machine that start-up competes
with the training workers' and the API server's is on the way to the first step. ``ray.init`` has no switch for
them, but it builds its head node as ``ray._private.node.Node(ray_params, head=True, ...)``, and ``RayParams``
has ``no_monitor`` and ``include_log_monitor``: :func:`lean_head_node` makes that class :class:`LeanHeadNode` for
the duration of the ``ray.init`` call, which starts the node with both off and no API server.

The same node starts its raylet with one prestarted worker process more than Ray's one per CPU
(``ray_cluster.EXTRA_PRESTARTED_PROCESSES``). The raylet starts those processes as the driver connects, and they
import Ray Train while the driver reads data and imports it too (``ray_cluster.preload_ray_train``). Ray Train's
controller reserves no CPU and takes one of them; its synchronisation barrier lives in the controller's process
(:mod:`rlhfctl.training.controller_barrier`), so with one more, a worker group of one worker per CPU finds a ready
process for every Train worker instead of starting (and importing Ray and Ray Train in) a new one on the way to the
first step. The count is a raylet command-line flag (``--num_prestart_python_workers``, written by
``ray._private.services.start_raylet`` from the node's CPUs, no ``ray.init`` setting): :class:`LeanHeadNode` raises
it in the raylet's command as the node starts it; a Ray that writes no such flag starts its usual count. The rest of
Ray (GCS, raylet, agents, workers, shutdown) is unchanged.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from ray._private import node as ray_node
from ray._private import ray_constants
from ray._private import services

RayNode = ray_node.Node
PRESTART_FLAG = re.compile(r"^--num_prestart_python_workers=(\d+)$")


class LeanHeadNode(RayNode):
    """Ray's node; as a head node, without the autoscaler monitor, the log monitor and (dashboard off) the API
    server, and with ``extra_prestarted`` more prestarted worker processes. The dashboard URL is then the empty
    string, as Ray's own API server reports it without a dashboard."""

    extra_prestarted = 0  # set by lean_head_node

    def __init__(self, ray_params, head: bool = False, **options) -> None:
        if head:
            ray_params.no_monitor = True
            ray_params.include_log_monitor = False
        super().__init__(ray_params, head=head, **options)

    def start_raylet(self, *args, **kwargs) -> None:
        with _prestarting_more(self.extra_prestarted):
            super().start_raylet(*args, **kwargs)

    def start_api_server(self, *, include_dashboard, raise_on_failure) -> None:
        if include_dashboard is not False:  # a dashboard asked for (or Ray's default): Ray's own
            super().start_api_server(include_dashboard=include_dashboard, raise_on_failure=raise_on_failure)
            return
        self._webui_url = ""


@contextlib.contextmanager
def lean_head_node(extra_prestarted: int = 0) -> Iterator[None]:
    """Within the block, the head node ``ray.init`` starts is a :class:`LeanHeadNode` whose raylet prestarts
    ``extra_prestarted`` more worker processes than Ray would."""
    class LeanHeadNodeWithMore(LeanHeadNode):
        pass

    LeanHeadNodeWithMore.extra_prestarted = extra_prestarted
    original = ray_node.Node
    ray_node.Node = LeanHeadNodeWithMore
    try:
        yield
    finally:
        ray_node.Node = original


def with_more_prestarted(command: list[str], extra: int) -> list[str]:
    """The raylet's ``command`` with ``extra`` more prestarted worker processes (unchanged without the flag)."""
    def raised(argument: str) -> str:
        count = PRESTART_FLAG.match(argument)
        return f"--num_prestart_python_workers={int(count.group(1)) + extra}" if count else argument

    return [raised(argument) for argument in command]


@contextlib.contextmanager
def _prestarting_more(extra: int) -> Iterator[None]:
    """Within the block, the raylet that ``services.start_raylet`` starts prestarts ``extra`` more worker processes
    (its other processes start as Ray starts them)."""
    original = services.start_ray_process

    def start_ray_process(command, process_type, *args, **kwargs):
        if process_type == ray_constants.PROCESS_TYPE_RAYLET:
            command = with_more_prestarted(command, extra)
        return original(command, process_type, *args, **kwargs)

    services.start_ray_process = start_ray_process
    try:
        yield
    finally:
        services.start_ray_process = original
