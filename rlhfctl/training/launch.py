"""Driver side of the core: prepare the run directory, start or join Ray, run the stage's loop, collect results.

```python
job = TrainingJob(stage="rm", config=config, train_loop=rm.train_loop, payload=RMPayload(train_rows=..., ...),
                  total_steps=120, samples_per_step=16, train_rows=1900, validation_rows=100, steps_per_epoch=60)
summary = run_training(job, resume="auto", progress=sink)     # RunSummary
```

Every worker's ``train_loop`` gets ``job.loop_config(core)``: the config, the payload (the recipe's frozen dataclass:
data rows and what the driver computed for the loop) and the core's :class:`CoreSettings`.

Modes: several workers (or any ``general.ray_address``) run on Ray Train (V2) as ``TorchTrainer`` does —
``DataParallelTrainer`` with a torch process-group backend (:mod:`rlhfctl.training.torch_backend`, which keeps
``import torch`` out of the driver and Ray Train's controller) and without helper actors a run never uses
(:mod:`rlhfctl.training.ray_trainer`): gloo on CPU, nccl on GPU, ``FailureConfig(max_failures)`` with worker-group
starts bounded by ``training.resource_wait_minutes``, checkpoints reported to ``RunConfig(storage_path=output_dir,
name=<stage>_run)``. One worker with no cluster address runs the loop in this process (what Ray Train's local
mode, ``ScalingConfig(num_workers=0)``, does too) without paying for Ray's start-up; checkpoints and resume work
the same, only worker-restart fault tolerance needs the Ray path.

The run directory's resume/force rules live in :mod:`rlhfctl.training.run_directory`; how a failure is told, in
:mod:`rlhfctl.training.run_failures`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from rlhfctl.config.layout import MachineResources, resolve_config
from rlhfctl.errors import RlhfctlError, RuntimeFailure, UserError
from rlhfctl.progress.events import Notice, NullSink, PhaseStarted, ProgressSink, RunFinished, RunLayout
from rlhfctl.training import allocator
from rlhfctl.training import checkpoint as ckpt
from rlhfctl.training import collector
from rlhfctl.runfiles import RESOLVED_CONFIG_FILE
from rlhfctl.training.health import HealthStopped, run_stoppable
from rlhfctl.training.job import RunSummary, TrainingJob
from rlhfctl.training.memory_plan import Probe, WorkerMemoryCheck, check_memory, probe_for_job
from rlhfctl.training.metrics import MetricsRecorder
from rlhfctl.training.run_directory import (
    RunPaths,
    changed_config_keys,
    discard_fresh_run,
    has_previous_run,
    prepare_run_directory,
    refuse_existing_run,
)
from rlhfctl.training.run_failures import describe_ray_failure, failure_message, health_stop_message, user_error_inside
from rlhfctl.training.trackers import TrackerRun, open_trackers, trackers_to_open
from rlhfctl.training.worker import CoreSettings

POLL_INTERVAL_S = 0.25


# ----------------------------------------------------------------------------------------------- event polling


class _Poller(threading.Thread):
    """Drains the progress channel every POLL_INTERVAL_S and hands events to the recorder."""

    def __init__(self, drain: Callable[[], list], recorder: MetricsRecorder) -> None:
        super().__init__(name="rlhfctl-progress", daemon=True)
        self._drain = drain
        self._recorder = recorder
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        while not self._stop_event.wait(POLL_INTERVAL_S):
            self.pump()

    def pump(self) -> None:
        try:
            for event in self._drain():
                self._recorder.handle(event)
        except Exception as exc:  # a dead actor after shutdown, a full disk: report once at the end
            self.error = exc

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        self.pump()


# ----------------------------------------------------------------------------------------------- run


def prepare_job(build_job: Callable[[Any], TrainingJob], config: Any, machine: MachineResources | None = None
                ) -> TrainingJob:
    """The one place the driver resolves ``training.num_training_workers`` (``"auto"``) for a run or a plan: the
    recipe's ``build_job`` gets the config with the worker count and resources the run will use, so its steps
    per epoch, data shards and batch totals (and anything else sized from the workers) agree with the launch."""
    resolved, layout = resolve_config(config, machine)
    job = build_job(resolved)
    job.layout = layout
    return job


def run_stage(build_job: Callable[[Any], TrainingJob], config: Any, *, machine: MachineResources | None = None,
              **options: Any) -> RunSummary:
    """What ``Recipe.run`` does: resolve the layout (:func:`prepare_job`), refuse a clobbering run before anything
    starts, build the job — on the Ray path while Ray starts (the data is read on a second thread) — log its
    warnings and :func:`run_training` it. ``options`` are run_training's."""
    resolved, layout = resolve_config(config, machine)
    sink = options.get("progress") or NullSink()
    sink.handle(RunLayout(resolved.stage, layout.describe(resolved.general.ray_address)))
    refuse_existing_run(RunPaths(resolved.stage, resolved), resume=options.get("resume", False),
                        force=options.get("force", False))
    with contextlib.ExitStack() as running:
        if layout.mode == "ray":
            from rlhfctl.training.ray_cluster import ray_session

            sink.handle(PhaseStarted("starting Ray, reading data"))
            reader = running.enter_context(ThreadPoolExecutor(1, thread_name_prefix="rlhfctl-data"))
            building = reader.submit(build_job, resolved)
            running.enter_context(ray_session(resolved.general.ray_address))  # run_training's session reuses it
            job = building.result()
        else:  # one process: no cyclic collection while torch, transformers and the models load
            running.enter_context(collector.start_up_without_collection())
            sink.handle(PhaseStarted("reading data"))
            job = build_job(resolved)
        job.layout = layout
        for message in job.warnings:
            logging.getLogger(f"rlhfctl.{job.stage}").warning("WARNING: %s", message)
        return run_training(job, **options)


def run_training(
    job: TrainingJob,
    *,
    resume: bool | Literal["auto"] = False,
    force: bool = False,
    progress: ProgressSink | None = None,
    config_path: str | None = None,
    fault_injection: dict[str, Any] | None = None,
    memory_check: bool = True,
    memory_probe: Probe | None = probe_for_job,
) -> RunSummary:
    """Run ``job`` to the end and return its summary (see the module docstring for modes and resume rules).

    ``config_path`` only improves the ``--resume`` command printed after a failure. ``fault_injection`` is for
    tests: ``{"after_step": N, "marker": path, "action": "kill" | "raise"}`` makes the last worker die (or raise)
    once, right after the checkpoint of step N. ``memory_check`` refuses (UserError) a run whose memory plan
    clearly exceeds what a worker has (``memory_probe`` says what this machine offers; where it cannot know, each
    worker checks its own device).
    """
    from rlhfctl.config.render import config_to_dict, write_resolved_config
    from rlhfctl.training.ray_cluster import ResourceRequest, check_fits_this_machine

    started = time.time()
    sink = progress or NullSink()
    output_dir_existed = job.output_dir.exists()
    general = job.config.general
    tracker_names = trackers_to_open(general.report_to, explicit="report_to" in general.model_fields_set)
    if job.mode == "local":
        sink.handle(PhaseStarted("starting the worker"))  # torch is imported here and by the loop
        check_fits_this_machine(ResourceRequest(job.config.training.num_training_workers,
                                                dict(job.config.training.resources_per_worker)))
    allocator.policy_requested(os.environ)  # a bad RLHFCTL_MALLOC is a user error before any worker starts
    memory_plan = check_memory(job, memory_probe) if memory_check else None
    resume_from = prepare_run_directory(job.paths, resume=resume, force=force)
    resumed_from_step = ckpt.read_step(resume_from) if resume_from else None  # read now: the run may prune it
    resuming = bool(resume) and has_previous_run(job.paths)
    changed = changed_config_keys(job.output_dir / RESOLVED_CONFIG_FILE, job.config) if resuming else []
    write_resolved_config(job.config, job.output_dir)
    try:
        trackers = open_trackers(tracker_names, TrackerRun(job.output_dir, job.stage, config_to_dict(job.config),
                                                           resuming=resuming))
    except UserError:
        if not resuming:
            discard_fresh_run(job.paths, remove_output_dir=not output_dir_existed)
        raise
    recorder = MetricsRecorder(job.output_dir, sink, keep_existing=resuming, trackers=trackers)
    if changed:  # through the recorder: the notice lands in events.jsonl too
        recorder.handle(Notice(f"the config changed since the run being resumed ({', '.join(changed)}); "
                               "the new values are used from here on"))
    if memory_plan is not None and memory_plan.verdict == "tight":
        recorder.handle(Notice(memory_plan.tight_notice()))
    for tracker in trackers:
        if getattr(tracker, "where", None):
            recorder.handle(Notice(f"metrics also go to the {tracker.where}"))
    core = CoreSettings(
        stage=job.stage, mode=job.mode, run_dir=str(job.run_dir), checkpoint_dir=str(job.checkpoint_dir),
        total_steps=job.total_steps, samples_per_step=job.samples_per_step,
        resume_from=str(resume_from) if resume_from else None, fault_injection=dict(fault_injection or {}),
        memory_check=WorkerMemoryCheck.for_workers(job.stage, memory_plan),
        health_history=list(recorder.history) if resuming else [],
    )
    try:
        if job.mode == "local":
            final_metrics = _run_local(job, core, recorder, config_path)
        else:
            final_metrics = _run_on_ray(job, core, recorder, config_path)
        if isinstance(final_metrics, HealthStopped):
            raise health_stop_message(job.paths, final_metrics, config_path)
    except UserError:  # bad input found by the workers (model, tokenizer): leave no half-started run behind
        recorder.close()
        if not resuming and not has_previous_run(job.paths):
            discard_fresh_run(job.paths, remove_output_dir=not output_dir_existed)
        raise
    except RuntimeFailure as failure:
        recorder.record_failure(failure.message)  # the timeline (events.jsonl) ends with the reason
        raise
    finally:
        recorder.close()
    final_metrics = {key: float(value) for key, value in (final_metrics or {}).items()}
    recorder.handle(RunFinished(steps=recorder.last_step, final_metrics=final_metrics))  # to events.jsonl + sink
    return RunSummary(
        stage=job.stage, final_metrics=final_metrics, history=list(recorder.history), steps=recorder.last_step,
        output_dir=job.output_dir, checkpoint_dir=job.checkpoint_dir, wall_time_s=time.time() - started,
        resumed_from_step=resumed_from_step, parameters=recorder.parameters, alarms=tuple(recorder.alarms),
    )


def _run_local(job: TrainingJob, core: CoreSettings, recorder: MetricsRecorder,
               config_path: str | None) -> dict | HealthStopped:
    from rlhfctl.training.progress_actor import LocalChannel

    import torch  # the loop imports it anyway; here to give the process its thread count back afterwards

    threads_before = torch.get_num_threads()
    channel = LocalChannel()
    core.local_channel_id = channel.channel_id
    poller = _Poller(channel.drain, recorder)
    poller.start()
    try:
        return run_stoppable(job.train_loop, job.loop_config(core))
    except RlhfctlError:
        raise
    except KeyboardInterrupt:
        raise failure_message(job.paths, "interrupted", config_path) from None
    except Exception as exc:
        raise failure_message(job.paths, f"{type(exc).__name__}: {exc}", config_path) from exc
    finally:
        poller.stop()
        channel.close()
        torch.set_num_threads(threads_before)


def _run_on_ray(job: TrainingJob, core: CoreSettings, recorder: MetricsRecorder,
                config_path: str | None) -> dict | HealthStopped:
    from rlhfctl.training.ray_cluster import ResourceRequest, check_fits, ray_session, worker_start_retries

    training = job.config.training
    request = ResourceRequest(training.num_training_workers, dict(training.resources_per_worker))
    with ray_session(job.config.general.ray_address) as owns_cluster:
        check_fits(request)
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

        from rlhfctl.training.progress_actor import new_progress_actor_name
        from rlhfctl.training.ray_trainer import LeanTrainer
        from rlhfctl.training.torch_backend import TorchBackendConfig

        core.progress_actor_name = new_progress_actor_name()
        per_worker = {name: amount for name, amount in request.per_worker.items() if name != "GPU"}
        trainer = LeanTrainer(  # = TorchTrainer without torch in this process or the controller, fewer helper actors
            # the loop config (data rows included) travels inside the function, which only the workers unpickle; as
            # Ray's train_loop_config it would also be pickled into the controller's run context and unpickled there
            functools.partial(run_stoppable, job.train_loop, job.loop_config(core)),
            owns_cluster=owns_cluster, progress_actor_name=core.progress_actor_name,
            backend_config=TorchBackendConfig(backend="nccl" if training.use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=training.num_training_workers, use_gpu=training.use_gpu,
                                         resources_per_worker=per_worker | (
                                             {"GPU": training.gpus_per_worker} if training.use_gpu else {})),
            run_config=RunConfig(
                name=job.run_name, storage_path=str(job.output_dir),
                failure_config=FailureConfig(
                    max_failures=training.max_failures,
                    controller_failure_limit=worker_start_retries(training.resource_wait_minutes)),
                checkpoint_config=CheckpointConfig(num_to_keep=core.num_to_keep),
            ),
        )
        poller = _Poller(trainer.drain_progress, recorder)
        poller.start()
        previous_sigint = signal.getsignal(signal.SIGINT)
        recorder.handle(PhaseStarted(f"starting {request.workers} worker{'s' if request.workers != 1 else ''}"))
        try:
            result = trainer.fit()
        except (KeyboardInterrupt, SystemExit):  # Ray Train's own Ctrl-C handler aborts the run with sys.exit
            raise failure_message(job.paths, "interrupted", config_path) from None
        except Exception as exc:
            user_error = user_error_inside(exc)
            if user_error is not None:
                raise user_error from None
            raise failure_message(job.paths, describe_ray_failure(exc, request, training.resource_wait_minutes),
                                   config_path) from exc
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, previous_sigint)  # fit() leaves its handler installed
            poller.stop()
        return result.return_value or {}
