"""Start or join Ray, and check that a worker group fits before asking Ray Train for it (never wait forever)."""

from __future__ import annotations

import contextlib
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


# RAY_WARN_BLOCKING_GET_INSIDE_ASYNC: Ray Train gives its controller "0" (no warning) through a runtime env; set
# before ray.init, every process of the embedded Ray inherits it instead (see embedded_ray_environment).
# __RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR: what Ray's default worker runs once it has connected, before it takes
# its first task (see preload_ray_train).
EMBEDDED_RAY_ENVIRONMENT = {"RAY_AUTH_MODE": "disabled", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                            "RAY_TRAIN_METRICS_ENABLED": "0", "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": "0",
                            "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR": "rlhfctl.training.ray_cluster.preload_ray_train"}
# The raylet starts at most this many worker processes at a time (Ray: one per CPU). Ray Train asks for its
# synchronisation actor and every worker at once, so on a 2-core machine the second worker waited for the first
# ones to connect; its start is on the way to the first step. Read by the raylet (a RayConfig setting).
STARTUP_CONCURRENCY_ENV = "RAY_worker_maximum_startup_concurrency"
MIN_STARTUP_CONCURRENCY = 4  # the controller and a 2-worker group prestarted, and one more
# The raylet prestarts one worker process per CPU as the driver connects; Ray Train's controller reserves no CPU and
# takes one, so the embedded Ray prestarts one more (ray_head.LeanHeadNode): a worker group of one worker per CPU
# then finds a ready process (Ray Train imported, preload_ray_train) for every Train worker.
EXTRA_PRESTARTED_PROCESSES = 1
# The raylet keeps at most this many idle worker processes (a RayConfig setting). Ray's default is the number of
# CPUs *available*: once a worker group's placement group reserves the CPUs, that drops to 0 and the raylet ends
# the idle processes it prestarted at ray.init, about a second before Ray Train asks for its controller's and
# workers' processes, which then wait for new interpreters. The embedded Ray keeps as many as it prestarted: one
# per CPU and one for the controller (EXTRA_PRESTARTED_PROCESSES).
IDLE_WORKERS_ENV = "RAY_num_workers_soft_limit"
# The longest an embedded Ray's worker process runs without cyclic garbage collection as it starts (preload_ray_train)
START_UP_WITHOUT_COLLECTION_S = 60.0
# Process state, not configuration: True while an embedded Ray started by ray_session(None) is running.
_embedded_running = False
# The driver's environment when that embedded Ray started: its raylet, and every worker process the raylet starts,
# inherited exactly these variables.
_embedded_environment: dict[str, str] | None = None
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
    global _embedded_running, _embedded_environment
    _prepare_environment()
    import ray

    if ray.is_initialized():
        yield _embedded_running
        return
    embedded_only: list[str] = []  # set here for the embedded instance only: unset again when it stops
    if address is None:
        # Our own single-user, local-only cluster: no token to manage (and no warning about it), no preemption to
        # watch (Ray Train's watcher is one more ~120 MB actor process polling node drain state) and no Prometheus
        # metrics export (there is no dashboard to read them); no queue for worker processes on small machines.
        startup = {STARTUP_CONCURRENCY_ENV: str(max(os.cpu_count() or 1, MIN_STARTUP_CONCURRENCY)),
                   IDLE_WORKERS_ENV: str((os.cpu_count() or 1) + EXTRA_PRESTARTED_PROCESSES)}
        for name, value in (EMBEDDED_RAY_ENVIRONMENT | startup).items():
            if name not in os.environ:
                os.environ[name] = value
                embedded_only.append(name)
    environment_at_start = dict(os.environ) if address is None else None  # what the embedded Ray will inherit
    try:
        if address is None:
            # address="local": always a new instance, never a cluster some other process left running; without
            # the head processes it never uses
            with _lean_head_node():
                ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                         object_store_memory=OBJECT_STORE_BYTES, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:
        raise UserError(f"cannot connect to the Ray cluster at general.ray_address = {address!r}: {exc}",
                        hint="Start one with `ray start --head`, or leave ray_address out for a local Ray.") from None
    _embedded_running = address is None
    _embedded_environment = environment_at_start
    try:
        yield _embedded_running
    finally:
        if _shared_depth:  # kept for the next session of the enclosing shared_ray_sessions()
            _shared_cleanups.append(embedded_only)
        else:
            _stop(embedded_only)


def preload_ray_train() -> None:
    """Run by every worker process of the embedded Ray when it starts, before its first task: pause the cyclic
    garbage collector for the start-up (:func:`rlhfctl.training.collector.pause_until_the_loop`), import Ray Train.

    Every such process hosts a piece of a Ray Train run (its controller, a worker; Ray's synchronisation actor where
    the controller does not host the barrier), and each imports ``ray.train`` (~0.8 CPU-seconds) when it unpickles
    its actor class. The raylet starts one such process per CPU and one for the controller
    (``EXTRA_PRESTARTED_PROCESSES``) as ``ray.init`` returns, a second or more before the run asks for them, and
    keeps them (``IDLE_WORKERS_ENV``) for the controller and the Train workers: in those, the import happens while
    the driver reads data and imports Ray Train itself instead of on the way to the first step (in a process started
    later for a Train worker it is the import that worker does anyway). The collector's passes over what the
    start-up imports and loads cost a Train worker ~1 CPU-second before its first step (~20 % of its chain,
    measured); its loop turns the collector on again, Ray Train's controller as it starts, any other process after
    ``START_UP_WITHOUT_COLLECTION_S``. Never raises (Ray would end the process)."""
    with contextlib.suppress(Exception):
        from rlhfctl.training import collector

        collector.pause_until_the_loop(START_UP_WITHOUT_COLLECTION_S)
    with contextlib.suppress(Exception):
        import ray.train  # noqa: F401
        from ray.train.v2._internal.execution.controller import TrainController  # noqa: F401


def embedded_ray_environment() -> dict[str, str] | None:
    """The environment every process of the running embedded Ray inherited (the driver's when ``ray.init`` started
    it); None when the Ray in use is not one that rlhfctl started in this process."""
    return dict(_embedded_environment) if _embedded_running and _embedded_environment is not None else None


def _lean_head_node() -> contextlib.AbstractContextManager:
    """:func:`rlhfctl.training.ray_head.lean_head_node` (with :data:`EXTRA_PRESTARTED_PROCESSES`), or nothing where
    Ray's node internals cannot be imported (then ``ray.init`` starts its usual head processes)."""
    try:
        from rlhfctl.training.ray_head import lean_head_node
    except ImportError:
        return contextlib.nullcontext()
    return lean_head_node(extra_prestarted=EXTRA_PRESTARTED_PROCESSES)


def _stop(embedded_only: list[str]) -> None:
    global _embedded_running, _embedded_environment
    import ray

    _embedded_running = False
    _embedded_environment = None
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
