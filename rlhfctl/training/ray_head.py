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
the duration of the ``ray.init`` call, which starts the node with both off and no API server. The rest of Ray
(GCS, raylet, agents, workers, shutdown) is unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ray._private import node as ray_node

RayNode = ray_node.Node


class LeanHeadNode(RayNode):
    """Ray's node; as a head node, without the autoscaler monitor, the log monitor and (dashboard off) the API
    server. The dashboard URL is then the empty string, as Ray's own API server reports it without a dashboard."""

    def __init__(self, ray_params, head: bool = False, **options) -> None:
        if head:
            ray_params.no_monitor = True
            ray_params.include_log_monitor = False
        super().__init__(ray_params, head=head, **options)

    def start_api_server(self, *, include_dashboard, raise_on_failure) -> None:
        if include_dashboard is not False:  # a dashboard asked for (or Ray's default): Ray's own
            super().start_api_server(include_dashboard=include_dashboard, raise_on_failure=raise_on_failure)
            return
        self._webui_url = ""


@contextlib.contextmanager
def lean_head_node() -> Iterator[None]:
    """Within the block, the head node ``ray.init`` starts is a :class:`LeanHeadNode`."""
    original = ray_node.Node
    ray_node.Node = LeanHeadNode
    try:
        yield
    finally:
        ray_node.Node = original
