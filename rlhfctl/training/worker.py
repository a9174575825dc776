"""Worker side of the core: what a stage's training loop calls on every Ray Train worker.

```python
def train_loop(loop_config: LoopConfig) -> dict[str, float]:
    ctx: WorkerContext[RMConfig, RMPayload] = setup_worker(loop_config)   # rank, world size, device, seeds, threads
    model = ctx.prepare_model(build_model())         # DDP when world_size > 1
    optimizer = build_optimizer(model, ctx.config.training)
    scheduler = build_scheduler(optimizer, ctx.config.training, ctx.total_steps)
    state = TrainState(models={"model": model}, optimizers={"model": optimizer}, schedulers={"model": scheduler})
    ctx.restore(state)                               # in place; state.step/epoch/batch_in_epoch updated
    ... for each micro-batch: with ctx.gradient_sync(model, sync=last_of_group), ctx.autocast(): loss = ...
                              ctx.backward(loss); after a group's last: ctx.step(optimizer, scheduler, model)
        ctx.log(step, ctx.all_reduce_mean({...}), epoch=epoch)
        if ctx.checkpoint_due(step): ctx.save(state)
    ctx.export(model, tokenizer, extra_files={...})
    return final_metrics                             # rank 0's dict becomes RunSummary.final_metrics
```

``ctx.config`` is the stage's validated config and ``ctx.payload`` the recipe's frozen payload dataclass, both as
the driver built them. ``ctx.log`` also runs the ``[monitor]`` health checks (:mod:`rlhfctl.training.health`):
every rank calls it at the same points, and a "stop" alarm is honoured at the next ``checkpoint_due``/``save``.
The same loop runs in two modes chosen by the driver (``CoreSettings.mode``): ``"ray"`` (Ray Train workers:
checkpoints reported with ``ray.train.report``, restored with ``ray.train.get_checkpoint``) and ``"local"`` (one
worker in the driver process, no Ray: checkpoints written atomically into the run directory).
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypedDict, TypeVar

from rlhfctl.progress.events import (
    CheckpointSaved,
    HealthAlarm,
    PhaseStarted,
    RunStarted,
    SampleEvent,
    StepEvent,
)
from rlhfctl.training import allocator
from rlhfctl.training import checkpoint as ckpt
from rlhfctl.training import collector
from rlhfctl.training.batching import shard_indices
from rlhfctl.training.checkpoint import TrainState
from rlhfctl.training.health import HealthStop, WorkerHealth, settings_for
from rlhfctl.training.progress_actor import ProgressSender
from rlhfctl.training.worker_checkpoints import (
    inject_fault,
    latest_checkpoint_folder,
    report_ray_checkpoint,
    write_local_checkpoint,
)

ConfigT = TypeVar("ConfigT")  # the stage's config (SFTConfig, RMConfig, PPOConfig, ...): has .general and .training
PayloadT = TypeVar("PayloadT")  # the recipe's frozen payload dataclass (SFTPayload, RMPayload, PPOPayload, ...)


@dataclass
class CoreSettings:
    """What the driver tells every worker about the run itself (the stage's config and payload travel beside it)."""

    stage: str
    mode: Literal["ray", "local"]
    run_dir: str  # absolute: output_dir/<stage>_run, where checkpoints live
    checkpoint_dir: str  # the final HF export
    total_steps: int
    samples_per_step: int
    resume_from: str | None = None  # a complete checkpoint folder found by the driver (resume)
    num_to_keep: int = 2
    progress_actor_name: str | None = None  # the Ray actor that takes rank 0's progress events (Ray mode)
    local_channel_id: str | None = None
    fault_injection: dict[str, Any] = field(default_factory=dict)  # tests only: {"after_step", "marker", "action"}
    memory_check: Any = None  # a memory_plan.WorkerMemoryCheck when the driver could not check this worker's device
    health_history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records of a resumed run


class LoopConfig(TypedDict):
    """What every worker's ``train_loop`` receives (bound to the function Ray Train runs), built by the driver
    (:meth:`rlhfctl.training.job.TrainingJob.loop_config`) and unpacked by :func:`setup_worker`; the loop
    annotates the context it gets back with its own types (``WorkerContext[RMConfig, RMPayload]``)."""

    config: Any  # the stage's validated config
    payload: Any  # the recipe's frozen payload dataclass
    core: CoreSettings


@dataclass
class WorkerContext(Generic[ConfigT, PayloadT]):
    """One worker's view of the run. Build it with :func:`setup_worker`."""

    rank: int
    world_size: int
    device: Any  # torch.device
    config: ConfigT  # the stage's validated config
    payload: PayloadT  # the recipe's frozen payload: data rows and what the driver computed for the loop
    core: CoreSettings
    _sender: ProgressSender
    _grad_scaler: Any = None
    _micro_steps: int = 0
    _health: WorkerHealth | None = None  # the health checks (training/health.py), set by setup_worker

    # ------------------------------------------------------------------------------------------- basics

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def training(self):
        return self.config.training

    @property
    def seed(self) -> int:
        return int(self.config.general.seed)

    @property
    def total_steps(self) -> int:
        return self.core.total_steps

    @property
    def distributed(self) -> bool:
        import torch.distributed as dist

        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def shard(self, num_rows: int, epoch: int | None, rank: int | None = None) -> list[int]:
        """This rank's (or ``rank``'s) row indices for ``epoch`` (reshuffled per epoch from the seed; ``None``: in
        order)."""
        rank = self.rank if rank is None else rank
        return shard_indices(num_rows, rank=rank, world_size=self.world_size, seed=self.seed, epoch=epoch)

    @property
    def sharded(self) -> bool:
        """True when the models are FSDP-sharded over the workers (``training.strategy = "fsdp"``, 2+ workers)."""
        return self.core.mode == "ray" and self.world_size > 1 and self.training.strategy == "fsdp"

    @property
    def sharded_on_cpu(self) -> bool:
        """FSDP on CPU: each step's gathered parameters and full gradients come from glibc's heap and are freed again,
        so the worker hands the heap's free pages back after every optimizer step and at phase boundaries
        (:func:`allocator.release_free_memory`)."""
        return self.sharded and self.device.type == "cpu"

    def prepare_model(self, model, *, ddp: bool = True):
        """Move to this worker's device; wrap in DistributedDataParallel when training on several workers, or shard
        it with FSDP2 under ``training.strategy = "fsdp"`` (:mod:`rlhfctl.training.fsdp`; the model is changed in
        place and returned).

        DDP workers on one machine's CPU average their gradients through shared memory (:mod:`shm_allreduce`);
        otherwise DDP's own all-reduce (gloo, or nccl on GPUs) does it.
        """
        if self.sharded:
            from rlhfctl.training.fsdp import shard_model

            return shard_model(model.to(self.device))
        if self.core.mode == "ray" and self.world_size > 1 and ddp:
            from ray.train.torch import prepare_model

            from rlhfctl.training import shm_allreduce

            wrapped = prepare_model(model, parallel_strategy="ddp",
                                    parallel_strategy_kwargs={"gradient_as_bucket_view": True})
            shm_allreduce.attach(wrapped)
            return wrapped
        return model.to(self.device)

    def prepare_frozen(self, model):
        """A model that is not trained (PPO's reference and reward models): sharded like the trained ones under
        FSDP (a base already sharded with another model is left as it is), else moved to the device. A view that
        is not a module (LoRA's reference: the policy with its adapters off) is returned as it is."""
        import torch

        if not isinstance(model, torch.nn.Module):
            return model
        if self.sharded:
            from rlhfctl.training.fsdp import shard_model

            return shard_model(model.to(self.device))
        return model.to(self.device)

    def gathered(self, *models):
        """Context: full parameters of ``models`` held for a stretch of forwards whose count differs between workers
        (generation, unequal validation shards); every rank enters it. A no-op unless sharded."""
        if not self.sharded:
            return contextlib.nullcontext()
        from rlhfctl.training.fsdp import gathered

        return gathered(*models)

    def autocast(self):
        """Context manager for ``training.mixed_precision`` (a no-op for ``"no"``)."""
        import torch

        precision = self.training.mixed_precision
        if precision == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ------------------------------------------------------------------------------------------- optimisation

    def gradient_sync(self, *models, sync: bool):
        """Around one micro-batch's forward and backward: with ``sync=False`` the models' DDP gradient all-reduce
        is skipped, so gradients accumulate locally until the accumulation group's last micro-batch."""
        stack = contextlib.ExitStack()
        if not sync:
            for model in models:
                if hasattr(model, "no_sync"):
                    stack.enter_context(model.no_sync())
        return stack

    def backward(self, loss) -> None:
        """``loss.backward()`` scaled for gradient accumulation (and fp16 loss scaling on GPU)."""
        loss = loss / self.training.gradient_accumulation_steps
        if self._grad_scaler is not None:
            self._grad_scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self, optimizer, scheduler, model) -> float:
        """Clip gradients to ``training.max_grad_norm`` (0: no clipping), step optimizer and scheduler, zero
        gradients. Returns the gradient norm before clipping (measured with clipping off too).
        """
        import torch

        if self._grad_scaler is not None:
            self._grad_scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        max_norm = self.training.max_grad_norm or math.inf  # clip_grad_norm_ with inf only measures
        grad_norm = 0.0
        if params:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
        if self._grad_scaler is not None:
            self._grad_scaler.step(optimizer)
            self._grad_scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if self.sharded_on_cpu:
            allocator.release_free_memory(sharded_on_cpu=True)  # what the step's gathers and full gradients freed
        return grad_norm

    def all_reduce_mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average float metrics over all workers (identity on one worker)."""
        return self._all_reduce(metrics, average=True)

    def all_reduce_sum(self, metrics: dict[str, float]) -> dict[str, float]:
        """Sum float metrics over all workers (e.g. counts and sums for exact validation means)."""
        return self._all_reduce(metrics, average=False)

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank (``[value]`` on one)."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def _all_reduce(self, metrics: dict[str, float], *, average: bool) -> dict[str, float]:
        if not self.distributed:
            return {key: float(value) for key, value in metrics.items()}
        import torch
        import torch.distributed as dist

        keys = list(metrics)  # same insertion order on every rank (same code)
        values = torch.tensor([float(metrics[key]) for key in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        if average:
            values /= self.world_size
        return dict(zip(keys, values.tolist()))

    # ------------------------------------------------------------------------------------------- progress

    def log(self, step: int, metrics: dict[str, float], *, epoch: int, split: str = "train") -> None:
        """Send one step's (already reduced) metrics to the driver: live display, metrics.jsonl, trackers; then run
        the health checks on them. Every rank calls it at the same points (the ranks agree here whether a health
        alarm stops the run: see :mod:`rlhfctl.training.health`)."""
        clean = {key: float(value) for key, value in metrics.items()}
        if self.is_main:
            self._sender.send(StepEvent(step=step, epoch=epoch, split=split, metrics=clean))  # type: ignore[arg-type]
        if self._health is not None:
            self._health.observe(step, split, clean)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Send a few example rows to the driver (``output_dir/samples.jsonl``); rank 0 checks them too."""
        if self.is_main:
            self._sender.send(SampleEvent(step=step, rows=list(rows)))
            if self._health is not None:
                self._health.observe_samples(step, rows)

    def phase(self, name: str) -> None:
        """Tell the driver a start-up phase began (``"tokenising 1,900 pairs"``); the live display shows it with
        its elapsed time until the next phase, and :meth:`restore` begins the last one (the first step)."""
        if self.is_main:
            self._sender.send(PhaseStarted(name))

    def announce_start(self, start_step: int, parameters: tuple[int, int] | None = None) -> None:
        """Tell the driver the loop is running from ``start_step`` (called by :meth:`restore`), with the trained
        models' ``(trainable, total)`` parameter counts."""
        if self.is_main:
            trainable, total = parameters or (None, None)
            self._sender.send(RunStarted(stage=self.core.stage, total_steps=self.core.total_steps,
                                         start_step=start_step, world_size=self.world_size,
                                         samples_per_step=self.core.samples_per_step,
                                         trainable_parameters=trainable, total_parameters=total))
        if self._health is not None:
            self._health.resume(self.core.health_history, start_step)

    # ------------------------------------------------------------------------------------------- checkpoints

    def checkpoint_due(self, step: int) -> bool:
        """True when ``training.save_every_steps`` asks for a checkpoint at ``step`` (epoch ends are separate), or
        when a health alarm stops the run (the checkpoint it keeps; :meth:`save` then stops the loop)."""
        every = self.training.save_every_steps
        stopping = self._health is not None and self._health.stop_pending is not None
        return (every > 0 and step % every == 0) or stopping

    def restore(self, state: TrainState | None = None) -> TrainState | None:
        """Load the latest checkpoint (after a worker restart, or the one the driver found for ``--resume``).

        With ``state``: loads in place into its models/optimizers/schedulers, restores this rank's RNG and
        returns ``state`` with step/epoch/batch_in_epoch/extra updated. Without: returns raw state dicts.
        Returns ``None`` when there is nothing to restore (``state``'s counters are left at their values).
        Also tells the driver where the run starts.
        """
        with latest_checkpoint_folder(mode=self.core.mode, run_dir=self.core.run_dir,
                                      resume_from=self.core.resume_from) as folder:
            restored = None if folder is None else ckpt.read_checkpoint(folder, state, rank=self.rank)
        parameters = ckpt.parameter_counts(*state.models.values()) if state is not None and state.models else None
        collector.start_the_loop()  # start-up is over: its objects leave the collector's full passes
        # what building, sharding and loading the models left in the heaps
        allocator.release_free_memory(sharded_on_cpu=self.sharded_on_cpu)
        self.announce_start(restored.step if restored else 0, parameters)
        return restored

    def save(self, state: TrainState, metrics: dict[str, float] | None = None) -> None:
        """Checkpoint ``state``. Every rank must call it (RNG states are gathered; on Ray it is a barrier).

        Raises :class:`HealthStop` on every rank after saving when a health alarm stops the run.
        """
        rng_states = self._gather_rng_states()
        name = ckpt.checkpoint_name(state.step)
        metrics = {key: float(value) for key, value in (metrics or {}).items()}
        if self.core.mode == "ray":
            report_ray_checkpoint(state, name, rng_states=rng_states, metrics=metrics, is_main=self.is_main,
                                  sharded=self.sharded, world_size=self.world_size, all_gather=self.all_gather)
        elif self.is_main:
            write_local_checkpoint(state, Path(self.core.run_dir), name, rng_states=rng_states, metrics=metrics,
                                   num_to_keep=self.core.num_to_keep)
        if self.is_main:
            self._sender.send(CheckpointSaved(step=state.step, path=str(Path(self.core.run_dir) / name)))
        allocator.release_free_memory(sharded_on_cpu=self.sharded_on_cpu)  # the checkpoint's serialised copies
        inject_fault(self.core.fault_injection, state.step, rank=self.rank, world_size=self.world_size)
        if self._health is not None and self._health.stop_pending is not None:
            raise HealthStop(self._health.stop_pending, checkpoint_step=state.step)

    def _gather_rng_states(self) -> list[dict[str, Any]]:
        return self.all_gather(ckpt.capture_rng_state())

    # ------------------------------------------------------------------------------------------- export

    def export_model(self, model):
        """The transformers model inside ``model`` (a DDP wrapper, a scorer, the model itself) as the export writes
        it. Every rank must call it: under FSDP the full weights are gathered into an unsharded copy on rank 0
        (None on the other ranks); otherwise the model itself."""
        from rlhfctl.training.fsdp import model_for_export

        return model_for_export(ckpt.unwrap_model(model), is_main=self.is_main)

    def export(self, model, tokenizer, extra_files: dict[str, Any] | None = None) -> Path | None:
        """Rank 0 writes the final model (from :meth:`export_model`) to ``checkpoint_dir`` in Hugging Face format
        (atomically); a LoRA-adapted model merged into its base, or as its adapter folder with
        ``lora.merge_on_export = false``."""
        if not self.is_main:
            return None
        from rlhfctl.training.export import export_hf

        try:
            return export_hf(model, tokenizer, Path(self.core.checkpoint_dir), extra_files=extra_files,
                             merge_adapters=self.merge_adapters_on_export)
        finally:
            # the exported state dict (and a merged copy with LoRA)
            allocator.release_free_memory(sharded_on_cpu=self.sharded_on_cpu)

    @property
    def merge_adapters_on_export(self) -> bool:
        """``lora.merge_on_export`` (True without a ``[lora]`` section)."""
        lora = getattr(self.config, "lora", None)
        return lora is None or lora.merge_on_export


# ----------------------------------------------------------------------------------------------- setup


def setup_worker(loop_config: LoopConfig) -> WorkerContext[Any, Any]:
    """Build this worker's context: rank/world size, device, per-rank seeds, torch threads = its CPU share, and
    the allocator policy that gives freed tensor memory back (:mod:`rlhfctl.training.allocator`)."""
    allocator.apply_training_policy()  # before the first model is built
    import torch

    core, config, payload = loop_config["core"], loop_config["config"], loop_config["payload"]
    training = config.training

    rank, world_size, local_workers = 0, 1, 1
    device = torch.device("cuda" if training.use_gpu and torch.cuda.is_available() else "cpu")
    if core.mode == "ray":
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        rank, world_size = context.get_world_rank(), context.get_world_size()
        local_workers = context.get_local_world_size()
        device = ray.train.torch.get_device()
    if core.memory_check is not None:  # before any model is loaded: refuse what clearly cannot fit (exit 2)
        from rlhfctl.training.memory_probe import probe_worker_device

        core.memory_check.check(probe_worker_device(device, local_workers, training.gpus_per_worker))

    cpu_share = max(1, int(math.floor(training.cpus_per_worker)) or 1)
    torch.set_num_threads(cpu_share)
    seed = int(config.general.seed) + rank
    random.seed(seed)
    torch.manual_seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % 2**32)

    grad_scaler = None
    if training.mixed_precision == "fp16" and device.type == "cuda":
        grad_scaler = torch.amp.GradScaler("cuda")
    sender = ProgressSender(actor_name=core.progress_actor_name, local_channel_id=core.local_channel_id,
                            enabled=rank == 0)
    ctx = WorkerContext(rank=rank, world_size=world_size, device=device, config=config, payload=payload,
                        core=core, _sender=sender, _grad_scaler=grad_scaler)
    ctx._health = WorkerHealth(settings_for(config), rank=rank, send=lambda alarm: sender.send(HealthAlarm(alarm)),
                               agree=ctx.all_reduce_sum)
    ctx.phase("loading model")  # what every stage's loop does next
    return ctx
