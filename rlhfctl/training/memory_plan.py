"""A run's memory plan: the stage's workload + the config -> the estimate, the pre-flight check and its advice.

```python
plan = plan_memory(job, probe=probe_for_job)      # MemoryPlan: estimate (or why none), this machine's capacity
plan.lines()                              # [("memory peak", "3.1 GiB per worker (cpu, at the ..."), ...]
verdict = plan.verdict                            # "fits" | "tight" | "refuse" | "unknown", with the advice
check_memory(job, probe=probe_for_job)            # raises UserError (exit 2) when the run clearly cannot fit
```

The stage supplies its workload (``TrainingJob.memory``, the recipe's hook; :mod:`rlhfctl.training.memory`); the
models' shapes come from their ``config.json`` (:mod:`rlhfctl.training.model_config`); everything else from the
config: ``training.mixed_precision``, ``optimizer``, ``num_training_workers``, the GPU resource. "Clearly cannot
fit" means the estimate exceeds the memory a worker has by more than :data:`REFUSE_RATIO` (the estimate's measured
error is within 25 %); between 1x and that the run starts with a warning. The advice re-estimates the run with one
knob changed at a time and lists those that fit: a smaller micro-batch, and gradient checkpointing, LoRA, bf16 (GPU)
or FSDP where the config offers them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from rlhfctl.errors import UserError
from rlhfctl.training import allocator
from rlhfctl.training.memory import LoraSpec, MemoryEstimate, MemoryInputs, StageWorkload, estimate_memory
from rlhfctl.training.memory_probe import DeviceMemory, format_bytes, probe_this_machine
from rlhfctl.training.model_config import read_model_shape
from rlhfctl.training.model_shape import ALL_LINEAR, ModelShape, ModelShapeError

REFUSE_RATIO = 1.2
Verdict = Literal["fits", "tight", "refuse", "unknown"]
WorkloadFor = Callable[[Any], StageWorkload]  # the recipe's hook: a config (this job's data) -> its workload


class PlannedJob(Protocol):
    """What the memory plan reads of a ``training.job.TrainingJob``."""

    stage: str
    config: Any  # the stage's config: .general, .training
    memory: WorkloadFor | None

    @property
    def mode(self) -> str: ...


Probe = Callable[[PlannedJob], "DeviceMemory | None"]


@dataclass(frozen=True)
class Advice:
    """One knob and the estimate with it."""

    setting: str  # as the user writes it: 'training.batch_size = 2'
    per_worker_peak_bytes: int


@dataclass(frozen=True)
class MemoryPlan:
    """The estimate (or why there is none), the memory a worker has (when known here) and the verdict."""

    estimate: MemoryEstimate | None
    inputs: MemoryInputs | None
    shapes_by_role: dict[str, ModelShape]
    unknown: str | None = None  # why there is no estimate
    available: DeviceMemory | None = None
    verdict: Verdict = "unknown"
    advice: tuple[Advice, ...] = ()
    engine_reserved_fraction: float = 0.0  # of each GPU, held by a colocated generation engine (vLLM)

    def lines(self) -> list[tuple[str, str]]:
        """The plan table's memory rows."""
        if self.estimate is None:
            return [("memory peak", f"unknown: {self.unknown}")]
        estimate = self.estimate
        parts = estimate.breakdown.to_dict()
        shown = ", ".join(f"{name.replace('_', ' ')} {format_bytes(value)}" for name, value in parts.items() if value)
        rows = [("memory peak", f"{format_bytes(estimate.per_worker_peak_bytes)} per worker ({estimate.device}, at "
                                f"the {estimate.peak_phase}): {shown}")]
        for role, model in estimate.per_model.items():
            shape = self.shapes_by_role[role]
            kept = {k: v for k, v in model.to_dict().items() if v}
            rows.append((f"  {role}", f"{shape.model_type}: " + ", ".join(
                f"{name.replace('_', ' ')} {format_bytes(value)}" for name, value in kept.items())))
        rows.append(("parameters", f"{estimate.trainable_parameters:,} trainable of {estimate.total_parameters:,}"))
        if self.available is None:
            rows.append(("memory available", "not known here (each worker checks its own device when it starts)"))
        else:
            rows.append(("memory available", f"{format_bytes(self.available.bytes_per_worker)} per worker "
                                             f"({self.available.source}): {self.verdict_text()}"))
        rows.extend(("note", note) for note in estimate.notes)
        return rows

    def verdict_text(self) -> str:
        if self.verdict == "fits":
            return "fits"
        text = {"tight": "may not fit (within the estimate's error)",
                "refuse": "does not fit", "unknown": "unknown"}[self.verdict]
        if self.advice:
            text += "; would fit with " + " or ".join(
                f"{item.setting} ({format_bytes(item.per_worker_peak_bytes)})" for item in self.advice)
        return text

    def tight_notice(self) -> str:
        """The warning of a run that starts although its estimate is above what a worker has."""
        assert self.estimate is not None and self.available is not None
        return (f"memory: the plan's {format_bytes(self.estimate.per_worker_peak_bytes)} per worker is above the "
                f"{format_bytes(self.available.bytes_per_worker)} a worker has ({self.available.source}): the run "
                f"{self.verdict_text()}")

    def to_dict(self) -> dict[str, Any]:
        """The ``memory`` object of ``--dry-run --json``."""
        if self.estimate is None:
            return {"per_worker_peak_bytes": None, "unknown": self.unknown}
        data = self.estimate.to_dict()
        models = self.inputs.workload.models if self.inputs else ()
        data["models"] = {use.role: {"source": use.source, "model_type": self.shapes_by_role[use.role].model_type,
                                     "head": use.head, "trained": use.trained} for use in models}
        data["available_bytes_per_worker"] = self.available.bytes_per_worker if self.available else None
        data["available_source"] = self.available.source if self.available else None
        data["verdict"] = self.verdict
        data["advice"] = [{"setting": item.setting, "per_worker_peak_bytes": item.per_worker_peak_bytes}
                          for item in self.advice]
        if self.engine_reserved_fraction:
            data["engine_reserved_fraction"] = self.engine_reserved_fraction
        return data


# ----------------------------------------------------------------------------------------------- inputs


def memory_inputs(config: Any, workload: StageWorkload, shapes: dict[str, ModelShape], *,
                  in_driver: bool) -> MemoryInputs:
    """The estimator's inputs from a stage config (``training.*``) and the stage's workload."""
    training, lora = config.training, getattr(config, "lora", None)
    return MemoryInputs(
        workload=workload, shapes=shapes, precision=training.mixed_precision, optimizer=training.optimizer,
        lora=lora_spec(lora), gradient_checkpointing=getattr(training, "gradient_checkpointing", False),
        world_size=training.num_training_workers, strategy=training.strategy,
        device="cuda" if training.use_gpu else "cpu", in_driver=in_driver,
        **_allocator_threshold(),
    )


def _allocator_threshold() -> dict[str, int]:
    """The workers' malloc mmap threshold when rlhfctl's allocator policy will fix it (else the estimator's default,
    glibc's dynamic threshold)."""
    threshold = allocator.planned_mmap_threshold()
    return {} if threshold is None else {"mmap_threshold_bytes": threshold}


def lora_spec(lora: Any) -> LoraSpec | None:
    """The estimator's view of a ``[lora]`` section (None: LoRA off)."""
    if lora is None:
        return None
    names = lora.target_names
    return LoraSpec(lora.r, ALL_LINEAR if names is None else tuple(names))


def read_shapes(workload: StageWorkload) -> dict[str, ModelShape]:
    """Every model's shape by source (ModelShapeError naming the source when one cannot be read)."""
    shapes: dict[str, ModelShape] = {}
    for use in workload.models:
        if use.source not in shapes:
            try:
                shapes[use.source] = read_model_shape(use.source)
            except ModelShapeError as exc:
                raise ModelShapeError(f"the {use.role.replace('_', ' ')} ({exc})") from None
    return shapes


def probe_for_job(job: PlannedJob) -> DeviceMemory | None:
    """The default probe: this machine when the workers run on it (local mode or a Ray rlhfctl starts), else None."""
    if job.config.general.ray_address is not None:
        return None
    training = job.config.training
    return probe_this_machine(workers=training.num_training_workers, use_gpu=training.use_gpu,
                              gpus_per_worker=training.gpus_per_worker, ray_processes=job.mode == "ray",
                              in_driver=job.mode == "local")


# ----------------------------------------------------------------------------------------------- plan and check


def plan_memory(job: PlannedJob, probe: Probe | None = probe_for_job) -> MemoryPlan:
    """The job's memory plan; with a probe, also what this machine offers and the verdict (with advice)."""
    if job.memory is None:
        return MemoryPlan(None, None, {}, unknown=f"the {job.stage} stage does not describe its memory use")
    workload = job.memory(job.config)
    try:
        shapes = read_shapes(workload)
    except ModelShapeError as exc:
        return MemoryPlan(None, None, {}, unknown=str(exc))
    inputs = memory_inputs(job.config, workload, shapes, in_driver=job.mode == "local")
    estimate = estimate_memory(inputs)
    reserved = engine_reservation(job.config)
    if reserved:
        note = (f"generation.backend = \"vllm\": each worker's vLLM engine reserves {reserved:g} of its GPU "
                "(generation.vllm_gpu_memory_utilization) beside this peak; training gets the rest")
        estimate = replace(estimate, notes=(*estimate.notes, note))
    shapes_by_role = {use.role: shapes[use.source] for use in workload.models}
    plan = MemoryPlan(estimate, inputs, shapes_by_role, engine_reserved_fraction=reserved)
    available = without_reservation(probe(job), reserved) if probe is not None else None
    if available is None:
        return plan
    verdict = judge(estimate.per_worker_peak_bytes, available.bytes_per_worker)
    advice = () if verdict == "fits" else tuple(advise(job.config, job.memory, inputs, available.bytes_per_worker))
    return replace(plan, available=available, verdict=verdict, advice=advice)


def engine_reservation(config: Any) -> float:
    """The fraction of each GPU a colocated generation engine holds beside training: ``generation.backend =
    "vllm"`` on GPUs reserves ``generation.vllm_gpu_memory_utilization`` of the device; 0 otherwise."""
    generation = getattr(config, "generation", None)
    if getattr(generation, "backend", "builtin") != "vllm" or not config.training.use_gpu:
        return 0.0
    return float(generation.vllm_gpu_memory_utilization)


def without_reservation(available: DeviceMemory | None, fraction: float) -> DeviceMemory | None:
    """A GPU's memory less the share a generation engine reserves (:func:`engine_reservation`)."""
    if available is None or not fraction or available.device != "cuda":
        return available
    return DeviceMemory(int(available.bytes_per_worker * (1 - fraction)), "cuda",
                        f"{available.source}, less {fraction:g} of it for the vLLM engine")


def judge(estimate_bytes: int, available_bytes: int) -> Verdict:
    """``fits`` (estimate <= available), ``tight`` (up to :data:`REFUSE_RATIO` x), ``refuse`` (beyond)."""
    if estimate_bytes <= available_bytes:
        return "fits"
    return "tight" if estimate_bytes <= REFUSE_RATIO * available_bytes else "refuse"


def advise(config: Any, workload_for: WorkloadFor, inputs: MemoryInputs, available_bytes: int) -> list[Advice]:
    """The knobs that, changed alone, bring the estimate within ``available_bytes`` (largest batch first); if none
    does, all of them together when that fits."""
    found: list[Advice] = []
    batch_done: set[str] = set()
    everything = inputs
    for setting, changed in _alternatives(config, workload_for, inputs):
        key = setting.split(" = ")[0]
        peak = estimate_memory(changed).per_worker_peak_bytes
        if not key.endswith("batch_size"):
            everything = _combine(everything, changed)
        if peak <= available_bytes and key not in batch_done:
            found.append(Advice(setting, peak))
            if key.endswith("batch_size"):
                batch_done.add(key)
    if not found and everything is not inputs:
        peak = estimate_memory(everything).per_worker_peak_bytes
        if peak <= available_bytes:
            found.append(Advice(_describe_combined(inputs, everything), peak))
    return found


def _alternatives(config: Any, workload_for: WorkloadFor, inputs: MemoryInputs) -> Iterator[tuple[str, MemoryInputs]]:
    training = config.training
    offered = type(training).model_fields
    for key in ("batch_size", "experience_batch_size"):
        if key not in offered:
            continue
        value = getattr(training, key)
        divisor = getattr(training, "num_mini_batches", 1) if key == "experience_batch_size" else 1
        while value > 1:
            value //= 2
            if value % divisor:
                break
            changed = config.model_copy(update={"training": training.model_copy(update={key: value})})
            yield f"training.{key} = {value}", replace(inputs, workload=workload_for(changed))
    if "gradient_checkpointing" in offered and not inputs.gradient_checkpointing:
        yield "training.gradient_checkpointing = true", replace(inputs, gradient_checkpointing=True)
    if "lora" in type(config).model_fields and inputs.lora is None:
        yield "a [lora] section (r = 8)", replace(inputs, lora=LoraSpec(8))
    if inputs.device == "cuda" and inputs.precision == "no":
        yield 'training.mixed_precision = "bf16"', replace(inputs, precision="bf16")
    if "strategy" in offered and inputs.strategy == "ddp" and inputs.world_size > 1:
        yield 'training.strategy = "fsdp"', replace(inputs, strategy="fsdp")


def _combine(current: MemoryInputs, changed: MemoryInputs) -> MemoryInputs:
    return replace(current, gradient_checkpointing=current.gradient_checkpointing or changed.gradient_checkpointing,
                   lora=current.lora or changed.lora,
                   precision=changed.precision if changed.precision != "no" else current.precision,
                   strategy=changed.strategy if changed.strategy != "ddp" else current.strategy)


def _describe_combined(before: MemoryInputs, after: MemoryInputs) -> str:
    parts = []
    if after.gradient_checkpointing and not before.gradient_checkpointing:
        parts.append("training.gradient_checkpointing = true")
    if after.lora is not None and before.lora is None:
        parts.append("a [lora] section (r = 8)")
    if after.precision != before.precision:
        parts.append(f'training.mixed_precision = "{after.precision}"')
    if after.strategy != before.strategy:
        parts.append(f'training.strategy = "{after.strategy}"')
    return " with ".join(parts)


def check_memory(job: PlannedJob, probe: Probe | None = probe_for_job) -> MemoryPlan:
    """The pre-flight check: raise UserError (exit 2) with the numbers and the advice when the run clearly cannot
    fit; otherwise return the plan (``verdict`` "tight": the caller warns)."""
    plan = plan_memory(job, probe)
    if plan.verdict != "refuse" or plan.estimate is None or plan.available is None:
        return plan
    raise UserError(refusal_message(job.stage, plan.estimate, plan.available), hint=refusal_hint(plan))


def refusal_message(stage: str, estimate: MemoryEstimate, available: DeviceMemory) -> str:
    parts = ", ".join(f"{name.replace('_', ' ')} {format_bytes(value)}"
                      for name, value in estimate.breakdown.to_dict().items() if value)
    return (f"this {stage} run needs about {format_bytes(estimate.per_worker_peak_bytes)} per worker at its "
            f"{estimate.peak_phase} ({parts}), but a worker has {format_bytes(available.bytes_per_worker)} "
            f"({available.source})")


def refusal_hint(plan: MemoryPlan) -> str:
    advice = " or ".join(f"{item.setting} (about {format_bytes(item.per_worker_peak_bytes)})" for item in plan.advice)
    fix = f"It would fit with {advice}. " if advice else "No single setting makes it fit: use a smaller model. "
    return fix + "If you know better, pass --no-memory-check."


@dataclass(frozen=True)
class WorkerMemoryCheck:
    """The check a worker makes against its own device when the driver could not (a GPU without ``nvidia-smi``
    here, a cluster joined by address): travels in ``CoreSettings.memory_check``."""

    stage: str
    estimate: MemoryEstimate
    engine_reserved_fraction: float = 0.0  # MemoryPlan's: subtracted from the worker's GPU

    @classmethod
    def for_workers(cls, stage: str, plan: MemoryPlan | None) -> "WorkerMemoryCheck | None":
        if plan is None or plan.estimate is None or plan.available is not None:
            return None
        return cls(stage, plan.estimate, plan.engine_reserved_fraction)

    def check(self, available: DeviceMemory | None) -> None:
        """Raise UserError when the estimate clearly exceeds ``available`` (nothing when that is unknown)."""
        available = without_reservation(available, self.engine_reserved_fraction)
        if available is None or judge(self.estimate.per_worker_peak_bytes, available.bytes_per_worker) != "refuse":
            return
        raise UserError(refusal_message(self.stage, self.estimate, available),
                        hint="Lower training.batch_size, or turn on gradient checkpointing, LoRA, bf16 (GPU) or FSDP "
                             "where offered (`--dry-run` on this kind of machine lists what fits); if you know "
                             "better, pass --no-memory-check.")
