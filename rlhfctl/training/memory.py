"""The memory plan's arithmetic: one worker's peak memory for a stage, from model shapes alone (pure, no torch).

```python
workload = StageWorkload(models=(ModelUse("policy", "checkpoints/sft", head="lm", trained=True),),
                         phases=(Phase("train step", (ForwardPass("policy", rows=8, length=512, grad=True,
                                                                  loss="token_nll"),)),))
estimate = estimate_memory(MemoryInputs(workload, shapes={"checkpoints/sft": shape}, world_size=2))
estimate.per_worker_peak_bytes, estimate.breakdown.weights, estimate.per_model["policy"].optimizer_state
```

A stage describes itself (its recipe's memory hook, :class:`StageWorkload`): which models a worker holds
(:class:`ModelUse`: trained or frozen, LM or score head, sharing another model's weights) and the phases of one
step (:class:`Phase`), each a set of forwards (:class:`ForwardPass`) or a generation (:class:`Generation`). The
run's settings (:class:`MemoryInputs`: precision, optimizer, LoRA, gradient checkpointing, world size, strategy,
device) come from the config. The estimate is

    framework overhead + data + weights + optimizer state + gradients that persist (DDP buckets, shared-memory
    averaging slots) + the largest phase's transient memory (activations, head temporaries, the KV cache, or the
    gradients a single worker creates at the end of its backward)

Where the numbers come from (``benchmarks/README.md`` has the measured peaks they are checked against):

- weights fp32 (rlhfctl loads every model in fp32; ``base_weight_bytes`` for a half-precision LoRA base), gradients
  fp32 for every trainable parameter, Adam/AdamW two fp32 states per trainable parameter, SGD none;
- a single worker's gradients exist from its backward to ``zero_grad``; DDP's gradient buckets persist, and CPU
  workers on one machine also map two gradient-sized shared-memory slots each (``training/shm_allreduce.py``);
- activations, loss-head temporaries, the KV cache: :mod:`rlhfctl.training.activation_memory` (per architecture,
  gradient checkpointing, LoRA, autocast, and what the CPU allocator keeps);
- LoRA freezes the base: gradients and optimizer state for the adapters (``r * (in + out)`` per wrapped linear)
  and a score head only; with it PPO's reference runs on the policy's base;
- a model loaded only for some phases (``ModelUse(resident=False)``: DPO's separate reference model, scored once
  before training and freed) weighs in those phases only;
- FSDP shards weights, gradients and optimizer state over the workers; on CPU the heap keeps much of the
  unit-sized parameter and gradient buffers it gathers every step (``_fsdp_heap_churn``);
- framework overhead: a worker process with torch and transformers imported (CPU), the CUDA context (GPU).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal

from rlhfctl.training.activation_memory import (
    MMAP_THRESHOLD_BYTES,
    PassSettings,
    generation,
    head_temporaries,
    kept_activations,
    no_grad_forward,
    one_block_bytes,
    transient_gradients,
)
from rlhfctl.training.stage_workload import ForwardPass, Generation, ModelUse, Phase, StageWorkload, Step
from rlhfctl.training.model_shape import ALL_LINEAR, ModelShape

Precision = Literal["no", "bf16", "fp16"]
Strategy = Literal["ddp", "fsdp"]
Device = Literal["cpu", "cuda"]

FP32 = 4
MiB = 1024**2

# Framework overhead, measured (benchmarks/bench_memory.py; PSS of a worker process holding the tiny model):
CPU_RAY_WORKER_BYTES = 455 * MiB  # a Ray Train worker with torch and transformers imported
CPU_DRIVER_WORKER_BYTES = 430 * MiB  # the driver process when one worker runs in it (no Ray)
CUDA_CONTEXT_BYTES = 600 * MiB  # the CUDA context and kernels on the device (typically 0.3-0.8 GiB)
# Of the three fp32 model copies FSDP allocates and frees per step on CPU, the part glibc's heap keeps resident
# (measured on 2 CPU workers, gradient checkpointing on: 60 M RM 0.45 GiB, 60 M PPO 0.98 GiB, 120 M RM 1.2 GiB
# above the plan without it, i.e. 2.6-3.1x the trained models' fp32 bytes; benchmarks/README.md)
FSDP_CPU_CHURN_RETAINED = 0.9


# ----------------------------------------------------------------------------------------------- the run's settings


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters on every trained model: rank and which linears (``"all-linear"`` or names)."""

    r: int
    target_modules: str | tuple[str, ...] = ALL_LINEAR


@dataclass(frozen=True)
class MemoryInputs:
    """Everything the estimate depends on."""

    workload: StageWorkload
    shapes: Mapping[str, ModelShape]  # ModelUse.source -> its shape
    precision: Precision = "no"  # training.mixed_precision
    optimizer: str = "AdamW"  # AdamW / Adam: two fp32 states per trainable parameter; SGD: none
    lora: LoraSpec | None = None
    gradient_checkpointing: bool = False
    world_size: int = 1
    strategy: Strategy = "ddp"
    device: Device = "cpu"
    in_driver: bool = False  # the single worker runs in the driver process (no Ray)
    base_weight_bytes: int = FP32  # bytes per frozen base weight (2 when a LoRA base is loaded in bf16)
    mmap_threshold_bytes: int = MMAP_THRESHOLD_BYTES  # CPU: malloc's mmap threshold in the workers (glibc's dynamic
    #                                                   one by default; rlhfctl's allocator policy fixes it lower)


# ----------------------------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class Breakdown:
    """Bytes by kind. The estimate's breakdown sums to its peak; a model's has no overhead or data."""

    weights: int = 0
    gradients: int = 0
    optimizer_state: int = 0
    activations: int = 0
    generation_cache: int = 0
    framework_overhead: int = 0
    data: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, item.name) for item in fields(self))

    def __add__(self, other: "Breakdown") -> "Breakdown":
        return Breakdown(**{item.name: getattr(self, item.name) + getattr(other, item.name) for item in fields(self)})

    def to_dict(self) -> dict[str, int]:
        return {item.name: int(getattr(self, item.name)) for item in fields(self)}


@dataclass(frozen=True)
class MemoryEstimate:
    """One worker's estimated peak and what it is made of."""

    per_worker_peak_bytes: int
    breakdown: Breakdown  # at the peak; sums to per_worker_peak_bytes
    per_model: dict[str, Breakdown]  # weights, gradients, optimizer state, activations at the peak, per role
    peak_phase: str  # the phase where the peak is reached
    phase_peaks: dict[str, int]  # each phase's peak (the worker's bytes if that phase were the largest)
    trainable_parameters: int
    total_parameters: int
    device: Device
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "per_worker_peak_bytes": self.per_worker_peak_bytes,
            "device": self.device,
            "peak_phase": self.peak_phase,
            "breakdown": self.breakdown.to_dict(),
            "per_model": {role: parts.to_dict() for role, parts in self.per_model.items()},
            "phase_peaks": dict(self.phase_peaks),
            "trainable_parameters": self.trainable_parameters,
            "total_parameters": self.total_parameters,
            "notes": list(self.notes),
        }


def estimate_memory(inputs: MemoryInputs) -> MemoryEstimate:
    """One worker's peak bytes for ``inputs`` (see the module docstring for the model)."""
    workload = inputs.workload
    models = {use.role: use for use in workload.models}
    static = {use.role: _static_breakdown(use, inputs) for use in workload.models}
    persistent_grads = _gradients_persist(inputs)
    overhead = _framework_overhead(inputs)
    data = workload.data_bytes if inputs.device == "cpu" else 0
    base = Breakdown(framework_overhead=overhead, data=data)
    for role, parts in static.items():
        if models[role].resident:
            base = base + Breakdown(weights=parts.weights, optimizer_state=parts.optimizer_state,
                                    gradients=parts.gradients if persistent_grads else 0)
    base = base + Breakdown(gradients=_communication_buffers(inputs, static)) + _fsdp_gathered(workload, inputs)

    best: tuple[int, str, Breakdown, dict[str, Breakdown]] | None = None
    phase_peaks: dict[str, int] = {}
    for phase in workload.phases:
        transient, by_role = _phase_transient(phase, models, inputs, persistent_grads)
        transient = transient + _loaded_for(phase, models, static)
        total = base.total + transient.total
        phase_peaks[phase.name] = total
        if best is None or total > best[0]:
            best = (total, phase.name, transient, by_role)
    peak, peak_phase, transient, transient_by_role = best or (base.total, "idle", Breakdown(), {})
    per_model = {role: Breakdown(weights=parts.weights, gradients=parts.gradients,
                                 optimizer_state=parts.optimizer_state) + transient_by_role.get(role, Breakdown())
                 for role, parts in static.items()}
    splits = [_parameter_split(use, inputs) for use in workload.models]
    trainable = sum(part[1] for part in splits)
    total_parameters = sum(part[0] + part[1] for part in splits)
    return MemoryEstimate(
        per_worker_peak_bytes=peak, breakdown=base + transient, per_model=per_model, peak_phase=peak_phase,
        phase_peaks=phase_peaks, trainable_parameters=trainable, total_parameters=total_parameters,
        device=inputs.device, notes=_notes(inputs),
    )


# ----------------------------------------------------------------------------------------------- static memory


def _parameters(use: ModelUse, shape: ModelShape) -> int:
    return shape.causal_lm_parameters() if use.head == "lm" else shape.classifier_parameters(1)


def _trainable_parameters(use: ModelUse, inputs: MemoryInputs) -> int:
    if not use.trained:
        return 0
    shape = inputs.shapes[use.source]
    if inputs.lora is None:
        return _parameters(use, shape)
    adapters = shape.lora_parameters(inputs.lora.r, inputs.lora.target_modules)
    return adapters + (shape.head_width if use.head == "score" else 0)  # a score head stays fully trainable


def _parameter_split(use: ModelUse, inputs: MemoryInputs) -> tuple[int, int]:
    """(frozen, trainable) parameters this role adds to the worker; weights it shares count for the other role."""
    shape = inputs.shapes[use.source]
    trainable = _trainable_parameters(use, inputs)
    if use.lora_shares_base_with is not None and inputs.lora is not None:
        frozen = 0
    elif not use.trained:
        frozen = _parameters(use, shape)
    elif inputs.lora is None:
        frozen = 0
    else:  # the frozen base under the adapters (the score head is counted as trainable)
        frozen = _parameters(use, shape) - (shape.head_width if use.head == "score" else 0)
    return frozen, trainable


def _static_breakdown(use: ModelUse, inputs: MemoryInputs) -> Breakdown:
    """Weights, gradients (all of them, whether or not they persist) and optimizer state of one role, per worker."""
    frozen, trainable = _parameter_split(use, inputs)
    states = 2 if inputs.optimizer in ("AdamW", "Adam") else 0
    parts = Breakdown(weights=frozen * inputs.base_weight_bytes + trainable * FP32, gradients=trainable * FP32,
                      optimizer_state=trainable * FP32 * states)
    if inputs.strategy == "fsdp" and inputs.world_size > 1:
        parts = Breakdown(**{name: math.ceil(value / inputs.world_size) for name, value in parts.to_dict().items()})
    return parts


def _loaded_for(phase: Phase, models: Mapping[str, ModelUse], static: Mapping[str, Breakdown]) -> Breakdown:
    """The weights of the non-resident models a phase uses (loaded for it, freed after it)."""
    roles = {step.role for step in phase.steps if not models[step.role].resident}
    return Breakdown(weights=sum(static[role].weights for role in roles))


def _gradients_persist(inputs: MemoryInputs) -> bool:
    """DDP's gradient buckets stay allocated between steps (gradients are views into them); a single worker's
    gradients are freed by ``zero_grad(set_to_none=True)`` and exist only from the backward to the step."""
    return inputs.world_size > 1 and inputs.strategy == "ddp"


def _communication_buffers(inputs: MemoryInputs, static: Mapping[str, Breakdown]) -> int:
    """CPU DDP workers average gradients in shared memory (``training/shm_allreduce.py``): two slots per worker,
    each the size of its gradients, shared by every worker — each worker's share is two gradient copies."""
    if inputs.device == "cpu" and _gradients_persist(inputs):
        return 2 * sum(parts.gradients for parts in static.values())
    return 0


def _fsdp_gathered(workload: StageWorkload, inputs: MemoryInputs) -> Breakdown:
    """FSDP gathers the full parameters of the block it computes and prefetches the next (two of the largest
    model's largest units), and reduce-scatters one block's full gradients of a trained model at a time; on CPU
    glibc keeps much of what that churns (:func:`_fsdp_heap_churn`)."""
    if inputs.strategy != "fsdp" or inputs.world_size < 2:
        return Breakdown()
    units = [inputs.shapes[use.source].largest_block_parameters() for use in workload.models]
    trained = [inputs.shapes[use.source].largest_block_parameters() for use in workload.models if use.trained]
    in_flight = Breakdown(weights=2 * max(units, default=0) * FP32,
                          gradients=max(trained, default=0) * FP32 if inputs.lora is None else 0)
    return in_flight + _fsdp_heap_churn(workload, inputs)


def _fsdp_heap_churn(workload: StageWorkload, inputs: MemoryInputs) -> Breakdown:
    """What the CPU heap keeps of FSDP's per-step buffers (full-parameter training).

    Every optimizer step allocates and frees, block by block, each trained model's full parameters twice (gathered
    for the forward, gathered again for the backward) and its full gradients once (before the reduce-scatter):
    three fp32 copies of the model. When a block is below malloc's mmap threshold they come from the heap,
    interleaved with tensors that live on (the gradient shards, the blocks' inputs kept by gradient checkpointing),
    so the heap cannot shrink and a worker settles about :data:`FSDP_CPU_CHURN_RETAINED` of the three copies above
    what is alive. Measured (benchmarks/README.md, "Sharded training"): with every block mmapped
    (``MALLOC_MMAP_THRESHOLD_=131072``) the gap is gone, so it is the allocator's, not live tensors."""
    if inputs.device != "cpu" or inputs.lora is not None:
        return Breakdown()
    trained = sum(_trainable_parameters(use, inputs) for use in workload.models
                  if use.trained and inputs.shapes[use.source].block_parameters * FP32 < inputs.mmap_threshold_bytes)
    parameters, gradients = 2 * trained * FP32, trained * FP32  # gathered twice, full gradients once
    return Breakdown(weights=int(parameters * FSDP_CPU_CHURN_RETAINED),
                     gradients=int(gradients * FSDP_CPU_CHURN_RETAINED))


def _gathered_to_generate(use: ModelUse, inputs: MemoryInputs) -> int:
    """FSDP samples with the generating model's full parameters gathered once (no collective per token,
    ``training/fsdp.py``): the part of its weights this worker does not hold already."""
    if inputs.strategy != "fsdp" or inputs.world_size < 2:
        return 0
    frozen, trainable = _parameter_split(use, inputs)
    full = frozen * inputs.base_weight_bytes + trainable * FP32
    return full - math.ceil(full / inputs.world_size)


def _merged_to_generate(step: Generation, use: ModelUse, inputs: MemoryInputs) -> int:
    """A LoRA model that samples with its adapters merged (``models.adapters.adapters_merged``) holds a merged copy
    of every adapted weight while it generates (not under FSDP, which samples with the adapters as they are)."""
    if not step.merges_adapters or inputs.lora is None or not use.trained:
        return 0
    if inputs.strategy == "fsdp" and inputs.world_size > 1:
        return 0
    linears = inputs.shapes[use.source].lora_linears(inputs.lora.target_modules)
    return sum(linear.in_features * linear.out_features for linear in linears) * inputs.base_weight_bytes


def _framework_overhead(inputs: MemoryInputs) -> int:
    if inputs.device == "cuda":
        return CUDA_CONTEXT_BYTES
    return CPU_DRIVER_WORKER_BYTES if inputs.in_driver else CPU_RAY_WORKER_BYTES


# ----------------------------------------------------------------------------------------------- phases


def _pass_settings(use: ModelUse, shape: ModelShape, inputs: MemoryInputs) -> PassSettings:
    lora = inputs.lora if use.trained else None
    return PassSettings(
        device=inputs.device, autocast=inputs.precision != "no", gradient_checkpointing=inputs.gradient_checkpointing,
        keeps_dropout=inputs.workload.keeps_dropout, frozen_base=lora is not None,
        lora_r=lora.r if lora is not None else 0,
        lora_linears_per_block=(len(shape.lora_linears(lora.target_modules)) // max(shape.num_layers, 1)
                                if lora is not None else 0),
        mmap_threshold_bytes=inputs.mmap_threshold_bytes,
    )


def _phase_transient(phase: Phase, models: Mapping[str, ModelUse], inputs: MemoryInputs,
                     persistent_grads: bool) -> tuple[Breakdown, dict[str, Breakdown]]:
    """The phase's transient memory at its peak, and each role's share of it."""
    parts = [_step_transient(step, models, inputs) for step in phase.steps]
    if not phase.together:
        if not parts:
            return Breakdown(), {}
        largest = max(range(len(parts)), key=lambda index: parts[index][0].total)
        return parts[largest][0], {phase.steps[largest].role: parts[largest][0]}

    # A training micro-step: every forward's kept activations at once, the largest head's temporaries on top;
    # then the backward frees them while the gradients appear (a single worker's gradients are new memory).
    kept = sum(kept_bytes for _, kept_bytes in parts)
    head_peak = max((part.activations - kept_bytes for part, kept_bytes in parts), default=0)
    carried = 0 if persistent_grads else sum(_new_gradients(models[role], inputs) for role in phase.gradients_of)
    forward_peak = Breakdown(activations=kept + head_peak, gradients=carried,
                             generation_cache=sum(part.generation_cache for part, _ in parts))
    by_role: dict[str, Breakdown] = {}
    for step, (_, kept_bytes) in zip(phase.steps, parts):
        by_role[step.role] = by_role.get(step.role, Breakdown()) + Breakdown(activations=kept_bytes)
    if persistent_grads:
        return forward_peak, by_role
    new_grads, last_block = carried, 0
    for step in phase.steps:
        if isinstance(step, ForwardPass) and step.grad and models[step.role].trained:
            use = models[step.role]
            new_grads += _new_gradients(use, inputs)
            shape = inputs.shapes[use.source]
            last_block = max(last_block, one_block_bytes(shape, step.rows, step.length,
                                                         _pass_settings(use, shape, inputs)))
    backward_end = Breakdown(gradients=new_grads, activations=last_block)
    return (backward_end, {}) if backward_end.total > forward_peak.total else (forward_peak, by_role)


def _new_gradients(use: ModelUse, inputs: MemoryInputs) -> int:
    """The gradients a single worker's backward creates for one trained model (its shard's under FSDP)."""
    shape = inputs.shapes[use.source]
    trainable = _trainable_parameters(use, inputs)
    if inputs.strategy == "fsdp" and inputs.world_size > 1:
        trainable = math.ceil(trainable / inputs.world_size)  # each worker keeps its shard's gradients
    return transient_gradients(shape, trainable, inputs.lora is None, _pass_settings(use, shape, inputs),
                               lm_head=use.head == "lm")


def _step_transient(step: Step, models: Mapping[str, ModelUse], inputs: MemoryInputs) -> tuple[Breakdown, int]:
    """(the step's transient peak, the part of it kept until the backward)."""
    use = models[step.role]
    shape = inputs.shapes[use.source]
    settings = _pass_settings(use, shape, inputs)
    if isinstance(step, Generation):
        cache, other = generation(shape, step.rows, step.prompt_length, step.new_tokens, settings)
        weights = _gathered_to_generate(use, inputs) + _merged_to_generate(step, use, inputs)
        return Breakdown(generation_cache=cache, activations=other, weights=weights), 0
    if step.grad:
        kept = kept_activations(shape, step.rows, step.length, settings, reads_per_row=step.reads_per_row,
                                weight_parameters=_parameters(use, shape))
        head = head_temporaries(shape, step.rows, step.length, step.loss, settings,
                                response_length=step.response_length)
        return Breakdown(activations=kept + head), kept
    return Breakdown(activations=no_grad_forward(shape, step.rows, step.length, step.loss, settings,
                                                 response_length=step.response_length)), 0


def _notes(inputs: MemoryInputs) -> tuple[str, ...]:
    notes = []
    for source, shape in sorted(inputs.shapes.items()):
        if shape.approximate:
            notes.append(f"{source}: model_type {shape.model_type!r} counted as a Llama-shaped decoder")
    return tuple(notes)

