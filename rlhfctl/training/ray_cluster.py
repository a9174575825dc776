"""Start or join Ray, and check that a worker group fits before asking Ray Train for it (never wait forever)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

from rlhfctl.errors import UserError

OBJECT_STORE_BYTES = 128 * 1024**2
# Ray Train's controller polls workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default) and
# ray.train.report waits for that tick. We report only at checkpoints, but 0.5 s still cuts each checkpoint's
# wait without making the controller busy. A value set by the user is kept.
HEALTH_CHECK_INTERVAL_S = "0.5"


# Ray Train's controller gives each start of the worker group this long to get its resources, then retries.
WORKER_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
DEFAULT_WORKER_START_TIMEOUT_S = 60.0  # Ray Train's own default


EMBEDDED_RAY_ENVIRONMENT = {"RAY_AUTH_MODE": "disabled", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                            "RAY_TRAIN_METRICS_ENABLED": "0"}
# Process state, not configuration: True while an embedded Ray started by ray_session(None) is running.
_embedded_running = False
# Inside shared_ray_sessions(): the Ray a ray_session started stays up for the next one; these undo it at the end.
_shared_depth = 0
_shared_cleanups: list[list[str]] = []


@dataclass(frozen=True)
class ResourceRequest:
    workers: int
    per_worker: dict[str, float]

    @property
    def total(self) -> dict[str, float]:
        return {name: amount * self.workers for name, amount in self.per_worker.items()}

    def describe(self) -> str:
        each = ", ".join(f"{amount:g} {name}" for name, amount in sorted(self.per_worker.items()))
        return f"{self.workers} worker{'s' if self.workers != 1 else ''} x {{{each}}}"


def worker_start_retries(wait_minutes: float) -> int:
    """Ray Train's ``controller_failure_limit`` for ``training.resource_wait_minutes``: the retries of a timed-out
    worker-group start that fit in that time (each attempt waits ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``), so
    the run stops with an error instead of waiting forever for resources that never come (Ray's default: -1)."""
    try:
        timeout_s = float(os.environ.get(WORKER_START_TIMEOUT_ENV, DEFAULT_WORKER_START_TIMEOUT_S))
    except ValueError:
        timeout_s = DEFAULT_WORKER_START_TIMEOUT_S
    if timeout_s <= 0:
        timeout_s = DEFAULT_WORKER_START_TIMEOUT_S
    attempts = max(1, math.ceil(wait_minutes * 60 / timeout_s - 1e-9))
    return attempts - 1


def _prepare_environment() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[bool]:
    """Make sure Ray is initialised for the duration of the block.

    ``address=None``: an embedded local Ray (dashboard off, modest object store, all of this machine's CPUs),
    shut down at the end. ``"auto"``/``"ray://..."``/``"host:port"``: join that cluster (left running).
    An already initialised Ray in this process (tests, notebooks, the example pipeline) is reused and left running.
    Yields True when the Ray in use is an embedded one that rlhfctl started in this process (this call or an
    enclosing one): it lives and dies with this process, so nothing has to outlive a run on it.
    """
    global _embedded_running
    _prepare_environment()
    import ray

    if ray.is_initialized():
        yield _embedded_running
        return
    embedded_only: list[str] = []  # set here for the embedded instance only: unset again when it stops
    if address is None:
        # Our own single-user, local-only cluster: no token to manage (and no warning about it), no preemption to
        # watch (Ray Train's watcher is one more ~120 MB actor process polling node drain state) and no Prometheus
        # metrics export (there is no dashboard to read them).
        for name, value in EMBEDDED_RAY_ENVIRONMENT.items():
            if name not in os.environ:
                os.environ[name] = value
                embedded_only.append(name)
    try:
        if address is None:
            # address="local": always a new instance, never a cluster some other process left running
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                     object_store_memory=OBJECT_STORE_BYTES, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:
        raise UserError(f"cannot connect to the Ray cluster at general.ray_address = {address!r}: {exc}",
                        hint="Start one with `ray start --head`, or leave ray_address out for a local Ray.") from None
    if address is None:
        stop_idle_head_processes()
    _embedded_running = address is None
    try:
        yield _embedded_running
    finally:
        if _shared_depth:  # kept for the next session of the enclosing shared_ray_sessions()
            _shared_cleanups.append(embedded_only)
        else:
            _stop(embedded_only)


# Head processes ``ray.init`` starts that an embedded rlhfctl Ray never uses, each a Python process of 50-90 MB
# (PSS, measured): the autoscaler monitor (a local Ray has no autoscaler), the log monitor (it streams worker logs to
# drivers; ours runs with log_to_driver=False) and the API server (without the dashboard it loads only the usage-
# stats module, and usage stats are off). ray.init has no switch for them, so they are stopped once it returns.
IDLE_HEAD_PROCESSES = ("kill_monitor", "kill_log_monitor", "kill_dashboard")


def stop_idle_head_processes() -> None:
    """Stop :data:`IDLE_HEAD_PROCESSES` of the embedded Ray this process started (nothing else: the GCS, the
    raylet and its agents stay). Ray's shutdown no longer counts them; a Ray without one of them is left as is."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return
    node = getattr(ray_worker, "_global_node", None)
    for method in IDLE_HEAD_PROCESSES:
        stop = getattr(node, method, None)
        if stop is None:  # a future Ray without this process type or method
            continue
        try:
            stop(check_alive=False)
        except Exception as exc:  # noqa: BLE001 - a process that cannot be stopped costs memory, not correctness
            logging.getLogger(__name__).debug("could not stop Ray's %s: %s", method, exc)


def _stop(embedded_only: list[str]) -> None:
    global _embedded_running
    import ray

    _embedded_running = False
    ray.shutdown()
    for name in embedded_only:  # a later session in this process may join a cluster: Ray Train propagates these
        os.environ.pop(name, None)


@contextlib.contextmanager
def shared_ray_sessions() -> Iterator[None]:
    """Within the block, a Ray that a :func:`ray_session` starts stays up for the sessions after it, and stops when
    the block ends (the example pipeline's stages share one Ray; none is started when every stage runs in
    process)."""
    global _shared_depth
    _shared_depth += 1
    try:
        yield
    finally:
        _shared_depth -= 1
        if not _shared_depth:
            while _shared_cleanups:
                _stop(_shared_cleanups.pop())


def check_fits(request: ResourceRequest) -> None:
    """Raise UserError (exit 2) with the numbers when the cluster cannot host the worker group."""
    import ray

    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    _raise_if_unfit(request, ray.cluster_resources(), nodes, "the Ray cluster", "the largest node")


def check_fits_this_machine(request: ResourceRequest) -> None:
    """The single-process path (no Ray): the same check against this machine's CPUs and GPUs."""
    import torch

    machine = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
    _raise_if_unfit(request, machine, None, "this machine", "")


def _raise_if_unfit(request: ResourceRequest, totals: dict, nodes: list[dict] | None, where: str,
                    largest_name: str) -> None:
    """``nodes=None``: one machine, no per-node check."""
    problems = []
    for name, needed in request.total.items():
        have = float(totals.get(name, 0.0))
        if needed > have + 1e-9:
            problems.append(f"{name}: {needed:g} requested in total, {where} has {have:g}")
    for name, each in request.per_worker.items() if nodes is not None else ():
        largest = max((float(node.get(name, 0.0)) for node in nodes), default=0.0)
        if each > largest + 1e-9:
            problems.append(f"{name}: {each:g} per worker, {largest_name} has {largest:g}")
    if problems:
        raise UserError(
            f"the worker group does not fit {where} ({request.describe()}):\n  - " + "\n  - ".join(problems),
            hint="Lower training.num_training_workers or training.resources_per_worker, or add nodes.",
        )
