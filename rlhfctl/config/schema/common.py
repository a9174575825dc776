"""The sections every stage's config shares: ``[general]``, ``[dataset]``, ``[training]`` (``[monitor]`` is
:mod:`.monitor`; the stage config base class that declares it is :mod:`.stage`).

A field's type says what it is (``Path``: a path key, resolved against the config's folder; :data:`ModelSource`:
a hub id or a local folder; an ``Ask(...)`` marker: ``rlhfctl init`` asks for it, see :mod:`.markers`), and its
``Field`` gives the default, the description (whose first sentence is the key's comment in the templates) and,
for a key without a default, ``examples`` (the value the template shows, live when the key is required, commented
out when it is optional). Stage modules subclass these sections to add keys or to describe a shared key in their
own words.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

from rlhfctl.config.schema.markers import MODEL_SOURCE, Ask, MustExist, WizardStep

# Scheduler names transformers.get_scheduler accepts without extra arguments (kept here so validation does
# not import transformers; tests check the list against transformers.SchedulerType).
LR_SCHEDULERS: tuple[str, ...] = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
Optimizer = Literal["AdamW", "Adam", "SGD"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
MixedPrecision = Literal["no", "bf16", "fp16"]
Strategy = Literal["ddp", "fsdp"]
Tracker = Literal["tensorboard", "wandb", "mlflow"]
TRACKERS: tuple[str, ...] = get_args(Tracker)

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
WorkerCount = Union[PositiveInt, Literal["auto"]]  # resolved by rlhfctl.config.layout

# Paths accept the strings TOML has (``Strict(False)``; everything else is strict, see _MODEL_CONFIG).
OutputFolder = Annotated[Path, Strict(False)]
InputFile = Annotated[Path, Strict(False), MustExist("file")]
ExportFolder = Annotated[Path, Strict(False), MustExist("export folder", "run the earlier stage first, or leave "
                                                                         "the key out")]
ModelSource = Annotated[str, MODEL_SOURCE]

# Keys `rlhfctl init` asks for that a stage describes in its own words (an override must repeat the type).
TrainFile = Annotated[InputFile, Field(examples=["data/{stage}.jsonl"]), Ask("Training data file:", WizardStep.DATA)]
Epochs = Annotated[PositiveInt, Ask("Epochs:", WizardStep.OPTIMISATION)]
BatchSize = Annotated[PositiveInt, Ask("Batch size per worker:", WizardStep.OPTIMISATION)]
LearningRate = Annotated[PositiveFloat, Ask("Learning rate:", WizardStep.OPTIMISATION)]

# Strict types: TOML already carries types, so "3" is not silently taken for 3 and 1 is not taken for true.
# Models are built on first validation (defer_build): importing the schema stays cheap for `rlhfctl init --help`.
_MODEL_CONFIG = ConfigDict(
    extra="forbid", validate_assignment=True, populate_by_name=True, strict=True, allow_inf_nan=False,
    defer_build=True,
)


class Section(BaseModel):
    """One ``[section]`` of a stage config."""

    model_config = _MODEL_CONFIG

    # Groups of keys of which at most one may be set (the loader, the templates and `init` honour them).
    exclusive_keys: ClassVar[tuple[tuple[str, ...], ...]] = ()
    # For a section a stage may leave out (``[lora]``): the comment above its commented-out header in templates.
    optional_section: ClassVar[str] = ""


# ----------------------------------------------------------------------------------------------- [general]


class GeneralCommon(Section):
    output_dir: Annotated[
        OutputFolder, Ask("Run directory (logs, metrics, Ray checkpoints):", WizardStep.FOLDERS)
    ] = Field(
        examples=["runs/{stage}"],
        description="Run directory: logs, metrics.jsonl, the resolved config and Ray Train's checkpoints for --resume.",
    )
    checkpoint_dir: Annotated[
        OutputFolder, Ask("Folder for the final exported model:", WizardStep.FOLDERS)
    ] = Field(examples=["checkpoints/{stage}"], description="Where the final model is exported in Hugging Face format.")
    seed: int = Field(42, description="Seed for the data order, the validation split, initialisation and sampling.")
    ray_address: Optional[str] = Field(
        None, examples=["auto"],
        description='Join an existing Ray cluster ("auto", "ray://host:10001" or "host:port" of its head); leave '
                    "out to start a local Ray.",
    )
    trust_remote_code: bool = Field(
        False, examples=[True],
        description="Allow model repositories to run their own Python code; off unless you trust the model.",
    )
    report_to: list[Tracker] = Field(
        default_factory=lambda: ["tensorboard"], examples=[["tensorboard", "wandb"]],
        description='Trackers that also get the metrics and health alarms: "tensorboard", "wandb", "mlflow" ([] for '
                    "none). TensorBoard writes output_dir/tensorboard (left out silently when tensorboardX is not "
                    "installed and the key is not set). W&B logs offline into output_dir/wandb unless WANDB_MODE "
                    "says otherwise (WANDB_PROJECT, WANDB_ENTITY, WANDB_DIR are honoured too); MLflow logs to a "
                    "SQLite store in output_dir/mlflow unless MLFLOW_TRACKING_URI names another "
                    "(MLFLOW_EXPERIMENT_NAME sets the experiment, default rlhfctl). Both need their extra: pip "
                    "install rlhfctl[wandb] / rlhfctl[mlflow]. Nothing is sent over the network unless those "
                    "variables say so; --resume continues the same W&B and MLflow runs.",
    )

    @field_validator("ray_address")
    @classmethod
    def _check_ray_address(cls, value: str | None) -> str | None:
        if value is None:
            return value
        value = value.strip()
        if value == "auto" or value.startswith("ray://") or (":" in value and not value.startswith("http")):
            return value
        raise ValueError('expected "auto", "ray://host:port" or "host:port" of a running Ray head')

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker_as_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value  # general.report_to=wandb on the command line

    @field_validator("report_to")
    @classmethod
    def _no_repeated_tracker(cls, value: list[str]) -> list[str]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"each tracker once, found {', '.join(repeated)} more than once")
        return value

    @model_validator(mode="after")
    def _separate_run_and_export_folders(self) -> "GeneralCommon":
        # The export replaces checkpoint_dir as a whole: it must not be, or contain, the run directory.
        run_dir = Path(self.output_dir).expanduser().absolute()
        export_dir = Path(self.checkpoint_dir).expanduser().absolute()
        if run_dir == export_dir or export_dir in run_dir.parents:
            raise ValueError(
                "general.checkpoint_dir must be a folder of its own, not general.output_dir or a parent of it "
                "(the final export replaces checkpoint_dir as a whole)"
            )
        return self


class ModelGeneral(GeneralCommon):
    """``[general]`` of the stages that start from one model (SFT, RM)."""

    base_model: Annotated[
        ModelSource, Ask("Model to start from (hub id or local folder):", WizardStep.MODELS, name="model")
    ] = Field(examples=["openai-community/gpt2"], description="Hugging Face hub id or local folder of the model to "
                                                              "start from.")


# ----------------------------------------------------------------------------------------------- [dataset]


class DatasetConfig(Section):
    exclusive_keys: ClassVar[tuple[tuple[str, ...], ...]] = (("validation_file", "validation_split_percentage"),)

    train_file: TrainFile = Field(description="Training data in the stage's format, one JSON object per line.")
    validation_file: Annotated[
        Optional[InputFile],
        Ask("Validation data file (empty: hold out {validation_split_percentage:g}% of the training data):",
            WizardStep.DATA),
    ] = Field(
        None, examples=["data/{stage}_validation.jsonl"],
        description="Separate validation data; when set, leave validation_split_percentage out.",
    )
    validation_split_percentage: float = Field(
        5.0, ge=0, lt=100, description="Percent of train_file held out for validation when validation_file is not set."
    )
    max_length: PositiveInt = Field(512, description="Maximum tokens of prompt + response.")

    @model_validator(mode="after")
    def _one_validation_source(self) -> "DatasetConfig":
        first, second = self.exclusive_keys[0]
        if getattr(self, first) is not None and second in self.model_fields_set:
            raise ValueError(f"set either dataset.{first} or dataset.{second}, not both")
        return self


# ----------------------------------------------------------------------------------------------- [training]


class TrainingCommon(Section):
    learning_rate: LearningRate = Field(1e-5, description="Peak learning rate.")
    epochs: Epochs = Field(1, description="Passes over the training data.")
    batch_size: BatchSize = Field(8, description="Examples per worker per optimizer micro-step.")
    optimizer: Optimizer = Field("AdamW", description=f"Optimizer: {', '.join(OPTIMIZERS)}.")
    lr_scheduler: str = Field(
        "linear", description="Learning-rate schedule (a transformers.get_scheduler name): " + ", ".join(LR_SCHEDULERS)
        + "."
    )
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="Fraction of the optimizer steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay (not applied to biases and norms).")
    gradient_accumulation_steps: PositiveInt = Field(1, description="Micro-steps per optimizer step.")
    max_grad_norm: float = Field(
        1.0, ge=0, description="Clip the gradient norm to this value before each optimizer step (0: no clipping)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass instead of keeping them (less memory, about "
        "a third more compute; non-reentrant, works with [lora])."
    )
    mixed_precision: MixedPrecision = Field(
        "no", description='"no" (fp32, the right choice on CPU), "bf16" or "fp16" autocast.'
    )
    strategy: Strategy = Field(
        "ddp", description='How the workers share the training: "ddp" (every worker holds the whole model, '
        'optimizer state and gradients; on one CPU machine gradients are averaged through shared memory, the '
        'fastest there) or "fsdp" (PyTorch FSDP2: weights, gradients and optimizer state sharded over the workers, '
        "about 1/workers of each per worker, full parameters gathered one transformer block at a time; for models "
        'whose training state does not fit one worker). With one worker "fsdp" runs as "ddp" (nothing to shard '
        "over; a warning says so). Checkpoints of fsdp runs are sharded (torch.distributed.checkpoint)."
    )
    num_training_workers: Annotated[
        WorkerCount, Ask('Number of training workers ("auto": the fastest layout for this machine):',
                         WizardStep.WORKERS, name="workers")
    ] = Field(
        "auto",
        description='Training workers: "auto" (the fastest layout for this machine) or a number; 2 or more run on '
                    "Ray Train. With auto, one machine with CPUs only runs one worker in this process on all its "
                    "cores (no Ray start-up), GPUs get one Ray Train worker each, and a Ray cluster "
                    "(general.ray_address) needs a number. The dry run and the run's first line say what was chosen.",
    )
    resources_per_worker: Annotated[
        dict[str, float],
        Ask("CPUs per worker:", WizardStep.WORKERS, name="cpus_per_worker", entry="CPU", entry_type=PositiveFloat),
        Ask("Give each worker a GPU?", WizardStep.WORKERS, name="use_gpu", flag="--gpu/--no-gpu", entry="GPU",
            entry_type=bool),
    ] = Field(default_factory=lambda: {"CPU": 1.0}, description="Resources each worker reserves, e.g. { CPU = 8, "
                                                                "GPU = 1 }; its whole CPUs are its torch threads. "
                                                                'With num_training_workers = "auto" on a machine '
                                                                "without GPUs, the one worker uses every core "
                                                                "instead.")
    save_every_steps: NonNegativeInt = Field(
        0, description="Checkpoint every N optimizer steps (0: only at the end of each epoch)."
    )
    max_failures: NonNegativeInt = Field(
        1, description="Times Ray Train restarts the worker group from the latest checkpoint after a failure."
    )
    resource_wait_minutes: float = Field(
        10.0, ge=0, description="Minutes the workers may wait for their resources before the run stops with an "
        "error. This covers starting and restarting them (e.g. while an autoscaler replaces a lost node); continue "
        "a stopped run with --resume. Counted in Ray Train's start attempts of RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S "
        "(60 s) each, at least one."
    )

    @field_validator("lr_scheduler")
    @classmethod
    def _check_scheduler(cls, value: str) -> str:
        if value not in LR_SCHEDULERS:
            close = difflib.get_close_matches(value.lower(), LR_SCHEDULERS, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"expected one of {', '.join(LR_SCHEDULERS)}, found {value!r}{hint}")
        return value

    @field_validator("num_training_workers", mode="before")
    @classmethod
    def _check_workers(cls, value: object) -> object:
        if value == "auto" or (type(value) is int and value > 0):
            return value
        raise ValueError(f'expected "auto" or a whole number of workers (1 or more), found {value!r}')

    @field_validator("resources_per_worker")
    @classmethod
    def _check_resources(cls, value: dict[str, float]) -> dict[str, float]:
        normalised: dict[str, float] = {}
        for name, amount in value.items():
            if amount < 0:
                raise ValueError(f"resource {name!r} must not be negative, found {amount}")
            normalised[name.upper() if name.lower() in ("cpu", "gpu") else name] = float(amount)
        if normalised.get("CPU", 0) <= 0 and normalised.get("GPU", 0) <= 0:
            raise ValueError("each worker needs at least some CPU or GPU, e.g. { CPU = 1 }")
        return normalised

    @property
    def cpus_per_worker(self) -> float:
        return self.resources_per_worker.get("CPU", 0.0)

    @property
    def gpus_per_worker(self) -> float:
        return self.resources_per_worker.get("GPU", 0.0)

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0
