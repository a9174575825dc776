"""The Ray Train (V2) trainer rlhfctl runs: ``DataParallelTrainer`` without the helpers a run of ours never uses.

Ray Train's controller starts a handful of helper actors, each its own ~120 MB process (measured: Ray's own
imports). Two of them do nothing for rlhfctl:

- ``DatasetsCallback`` starts a ``DatasetManager`` actor that serves Ray Data shards; rlhfctl passes no Ray
  ``datasets`` (each worker reads its rows from the train-loop config), so it is left out on every cluster;
- ``PlacementGroupCleanerCallback`` starts a detached actor that frees the run's placement group if the controller
  dies without cleaning up; on a Ray instance this run started itself, the whole instance is shut down with the
  run, so it is left out there (a joined cluster keeps it).

Callbacks are Ray Train's own extension point; ``_create_default_callbacks`` is where it builds the list. If a
future Ray renames either, nothing breaks: the helpers simply start again.

A third helper, the ``AutoscalingCoordinator`` actor (another ~1.6 CPU-seconds of start-up and a process), exists
so that a fixed-size worker group can ask a cluster autoscaler for its nodes. The embedded local Ray has no
autoscaler, so there the fixed scaling policy runs without it (:class:`FixedSizeWithoutAutoscaler`); a joined
cluster keeps Ray's policy. ``_initialize_and_run_controller`` is where ``fit()`` hands the policy over.

Ray Train also gives its controller, and the controller its workers, a runtime env that carries the driver's
``RAY_TRAIN_*`` settings (``get_env_vars_to_propagate``). A process with a runtime env cannot be one of the idle
worker processes Ray keeps ready: each gets a fresh one, started through Ray's runtime-env setup (two interpreter
starts). On the embedded Ray every process inherits the driver's environment from the raylet anyway, so when
those settings are the ones the embedded Ray started with (:func:`~rlhfctl.training.ray_cluster.embedded_ray_environment`),
the controller starts without a runtime env (:class:`InheritedEnvironmentController`) and so do its
synchronisation actor and workers (:class:`InheritedEnvironmentWorkerGroup`). A setting changed after Ray started,
or any joined cluster, keeps Ray's way.

The run's progress events (:mod:`rlhfctl.training.progress_actor`) need an actor that lives on the driver's node for
the whole run: a controller started here is one, so it hosts them (one process and ~1 CPU-second fewer than an
actor of their own); where Ray starts the controller, a small actor of its own does. Either way it is named
``progress_actor_name`` and :meth:`LeanTrainer.drain_progress` empties it, also after ``fit()`` returned. For the
same reason that controller also hosts the workers' synchronisation barrier instead of Ray's
``SynchronizationActor`` (:mod:`rlhfctl.training.controller_barrier`), so the second of the raylet's prestarted
processes is left for a Train worker.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any

import ray
from ray._common.constants import RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR
from ray.train.v2._internal.constants import DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE
from ray.train.v2._internal.constants import get_env_vars_to_propagate
from ray.train.v2._internal.execution.controller import TrainController
from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from rlhfctl.training import collector
from rlhfctl.training.controller_barrier import BarrierHost, HostedBarrierWorkerGroup
from rlhfctl.training.progress_actor import ProgressQueue, create_progress_actor
from rlhfctl.training.ray_cluster import embedded_ray_environment

NEVER_NEEDED = frozenset({"DatasetsCallback"})
NOT_NEEDED_ON_OWN_CLUSTER = frozenset({"PlacementGroupCleanerCallback"})


class FixedSizeWithoutAutoscaler(FixedScalingPolicy):
    """Ray Train's fixed-size scaling policy minus its resource requests to a cluster autoscaler (none exists on
    an embedded Ray): the same decisions, no ``AutoscalingCoordinator`` actor."""

    def after_controller_start(self, train_run_context) -> None:
        return None

    def _maybe_send_resource_request(self) -> None:
        return None

    def _send_resource_request(self) -> None:
        return None


class InheritedEnvironmentWorkerGroup(HostedBarrierWorkerGroup):
    """Ray Train's worker group whose workers inherit the controller's environment instead of receiving Ray Train's
    settings again through a runtime env (only a ``RunConfig.worker_runtime_env`` is passed on), synchronised by the
    controller's barrier (:mod:`rlhfctl.training.controller_barrier`)."""

    @staticmethod
    def _get_worker_runtime_env(custom_runtime_env):
        return dict(custom_runtime_env)


class InheritedEnvironmentController(ProgressQueue, BarrierHost, TrainController):
    """Ray Train's controller, started without a runtime env, creating :class:`InheritedEnvironmentWorkerGroup`,
    and hosting the run's progress events and its workers' synchronisation barrier."""

    worker_group_cls = InheritedEnvironmentWorkerGroup

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        collector.resume_without_collecting()  # the embedded Ray's processes start without it (preload_ray_train)


def settings_inherited_from_embedded_ray() -> bool:
    """Whether every setting Ray Train would hand its controller through a runtime env already has that value in
    the environment the embedded Ray's processes inherited (False when no embedded Ray runs)."""
    inherited = embedded_ray_environment()
    if inherited is None:
        return False
    settings = get_env_vars_to_propagate()
    settings.setdefault(RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR, DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
    return all(inherited.get(name) == value for name, value in settings.items())


class LeanTrainer(DataParallelTrainer):
    """``DataParallelTrainer(..., owns_cluster=..., progress_actor_name=...)``: ``owns_cluster`` is ``True`` when
    this process started the Ray instance; ``progress_actor_name`` is what the workers look the progress actor up
    by (:func:`rlhfctl.training.progress_actor.new_progress_actor_name`)."""

    def __init__(self, *args, owns_cluster: bool, progress_actor_name: str, **kwargs) -> None:
        self._owns_cluster = owns_cluster
        self._skipped_callbacks = NEVER_NEEDED | (NOT_NEEDED_ON_OWN_CLUSTER if owns_cluster else frozenset())
        self._progress_actor_name = progress_actor_name
        self._progress_actor: Any = None  # while it runs
        self._progress_left: list[Any] = []  # drained from it when it stopped, not yet handed out
        self._progress_lock = threading.RLock()  # RLock: the SIGINT handler may run while the main thread holds it
        super().__init__(*args, **kwargs)

    def drain_progress(self, timeout_s: float = 30) -> list[Any]:
        """The progress events sent since the last call, in order (none before the run's actor started)."""
        with self._progress_lock:
            fresh = ([] if self._progress_actor is None
                     else ray.get(self._progress_actor.drain_progress.remote(), timeout=timeout_s))
            events, self._progress_left = self._progress_left + fresh, []
            return events

    def _keep_progress(self, actor, timeout_s: float) -> None:
        """Take what ``actor`` holds now into this process (handed out by the next :meth:`drain_progress`)."""
        with self._progress_lock, contextlib.suppress(ray.exceptions.RayError):  # a dead actor: its events with it
            self._progress_left += ray.get(actor.drain_progress.remote(), timeout=timeout_s)

    @contextlib.contextmanager
    def _hosting_progress(self, actor) -> Any:
        """Within the block, ``actor`` holds the progress events; what it still holds at the end is kept."""
        with self._progress_lock:
            self._progress_actor = actor
        try:
            yield
        finally:
            with self._progress_lock:
                self._progress_actor = None
                self._keep_progress(actor, timeout_s=30)

    def _register_sigint_handler(self, controller) -> None:
        """Ray's Ctrl-C handler aborts the run, and the abort ends the controller's process: before it, the events
        the controller holds are taken into this process (the separate progress actor outlives the abort anyway)."""
        super()._register_sigint_handler(controller)
        abort_run = signal.getsignal(signal.SIGINT)

        def keep_progress_then_abort(signum, frame) -> None:
            actor = self._progress_actor
            if actor is not None:
                self._keep_progress(actor, timeout_s=5)
            abort_run(signum, frame)

        signal.signal(signal.SIGINT, keep_progress_then_abort)

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets:  # never from rlhfctl; keep Ray's behaviour if it ever happens
            return callbacks
        return [callback for callback in callbacks if type(callback).__name__ not in self._skipped_callbacks]

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        policy = controller_init_kwargs.get("scaling_policy")
        if self._owns_cluster and type(policy) is FixedScalingPolicy:
            controller_init_kwargs["scaling_policy"] = FixedSizeWithoutAutoscaler(policy.scaling_config)
        if not (self._owns_cluster and settings_inherited_from_embedded_ray()):
            queue = create_progress_actor(self._progress_actor_name)
            try:
                with self._hosting_progress(queue):
                    return super()._initialize_and_run_controller(**controller_init_kwargs)
            finally:
                ray.kill(queue)
        # Ray's own steps minus the runtime env (and minus the node label: the embedded Ray is one node)
        controller_class = ray.remote(num_cpus=0, concurrency_groups=BarrierHost.concurrency_groups())(
            InheritedEnvironmentController)
        controller = controller_class.options(name=self._progress_actor_name).remote(**controller_init_kwargs)
        with self._hosting_progress(controller):
            if threading.current_thread() is threading.main_thread():
                self._register_sigint_handler(controller)
            ray.get(controller.run.remote())
            return ray.get(controller.get_result.remote())
