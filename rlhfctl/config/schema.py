"""Typed configuration of every stage.

One TOML file configures one stage (``sft``, ``rm`` or ``ppo``). Sections follow the workflow rlhfctl replaces
(``[general]``, ``[dataset]``, ``[training]``; the seed's ``General``/``Dataset``/``Training`` spellings are
accepted) plus ``[generation]`` for PPO. Every model forbids unknown keys; the loader turns pydantic's errors
into :class:`rlhfctl.errors.ConfigIssue` objects with "did you mean" suggestions.

Nothing here imports torch, ray or transformers: validating a config must stay fast.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Stage = Literal["sft", "rm", "ppo"]
STAGES: tuple[str, ...] = ("sft", "rm", "ppo")

OPTIMIZERS: tuple[str, ...] = ("AdamW", "Adam", "SGD")

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

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


# Strict types: TOML already carries types, so "3" is not silently taken for 3 and 1 is not taken for true.
# Path fields opt out (``strict=False``) so they accept the strings TOML has.
_MODEL_CONFIG = ConfigDict(
    extra="forbid", validate_assignment=True, populate_by_name=True, strict=True, allow_inf_nan=False
)


class _Section(BaseModel):
    model_config = _MODEL_CONFIG


# ----------------------------------------------------------------------------------------------- [general]


class _GeneralCommon(_Section):
    output_dir: Path = Field(
        strict=False,
        description="Run directory: logs, metrics.jsonl, the resolved config and Ray Train's storage for resuming.",
    )
    checkpoint_dir: Path = Field(
        strict=False, description="Where the final model is exported in Hugging Face format."
    )
    seed: int = Field(42, description="Seed for data order, splits, initialisation and sampling.")
    ray_address: str | None = Field(
        None,
        description='Unset: start an embedded local Ray. "auto" or "ray://host:10001": join an existing cluster.',
    )
    trust_remote_code: bool = Field(
        False, description="Allow model repositories to run their own Python code. Off unless you trust the model."
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

    @model_validator(mode="after")
    def _separate_run_and_export_folders(self) -> "_GeneralCommon":
        # The export replaces checkpoint_dir as a whole: it must not be, or contain, the run directory.
        run_dir = Path(self.output_dir).expanduser().absolute()
        export_dir = Path(self.checkpoint_dir).expanduser().absolute()
        if run_dir == export_dir or export_dir in run_dir.parents:
            raise ValueError(
                "general.checkpoint_dir must be a folder of its own, not general.output_dir or a parent of it "
                "(the final export replaces checkpoint_dir as a whole)"
            )
        return self


class ModelGeneral(_GeneralCommon):
    """``[general]`` of the SFT and RM stages."""

    base_model: str = Field(description="Hugging Face hub id or local folder of the model to start from.")


class PPOGeneral(_GeneralCommon):
    """``[general]`` of the PPO stage."""

    model_name: str = Field(description="Hub id or local folder of the policy (and its tokenizer).")
    model_pretrain: Path | None = Field(
        None,
        strict=False,
        description="Optional SFT export (rlhfctl sft train's checkpoint_dir); loaded instead of model_name.",
    )
    rm_name: str = Field(description="Hub id or local folder of the reward model architecture.")
    rm_pretrain: Path | None = Field(
        None,
        strict=False,
        description="Optional RM export (rlhfctl rm train's checkpoint_dir); loaded instead of rm_name.",
    )


# ----------------------------------------------------------------------------------------------- [dataset]


class DatasetConfig(_Section):
    train_file: Path = Field(
        strict=False, description="Training data in the stage's standard format (JSONL and variants)."
    )
    validation_file: Path | None = Field(None, strict=False, description="Optional separate validation data.")
    validation_split_percentage: float = Field(
        5.0,
        ge=0,
        lt=100,
        description="Percent of train_file held out for validation when validation_file is not set.",
    )
    max_length: PositiveInt = Field(512, description="Maximum tokens of prompt + response.")

    @model_validator(mode="after")
    def _one_validation_source(self) -> "DatasetConfig":
        if self.validation_file is not None and "validation_split_percentage" in self.model_fields_set:
            raise ValueError(
                "set either dataset.validation_file or dataset.validation_split_percentage, not both"
            )
        return self


# ----------------------------------------------------------------------------------------------- [training]


class TrainingCommon(_Section):
    optimizer: Literal["AdamW", "Adam", "SGD"] = Field("AdamW", description="One of AdamW, Adam, SGD.")
    batch_size: PositiveInt = Field(8, description="Examples per worker per optimizer micro-step.")
    epochs: PositiveInt = Field(1, description="Passes over the training data.")
    learning_rate: PositiveFloat = Field(1e-5, description="Peak learning rate.")
    lr_scheduler: str = Field("linear", description="A transformers.get_scheduler name: " + ", ".join(LR_SCHEDULERS))
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay (not applied to biases and norms).")
    num_training_workers: PositiveInt = Field(2, description="Ray Train workers.")
    resources_per_worker: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0}, description='Resources each worker reserves, e.g. { CPU = 8, GPU = 1 }.'
    )
    gradient_accumulation_steps: PositiveInt = Field(1, description="Micro-steps per optimizer step.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; leave out to disable.")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="Fraction of optimizer steps spent warming up.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description='"no" (fp32, the right choice on CPU), "bf16" or "fp16" autocast.'
    )
    save_every_steps: NonNegativeInt = Field(
        0, description="Checkpoint every N optimizer steps (0: only at the end of each epoch)."
    )
    max_failures: NonNegativeInt = Field(
        1, description="Times Ray Train restarts the worker group from the latest checkpoint after a failure."
    )
    resource_wait_minutes: float = Field(
        10.0, ge=0, description="How long starting (or restarting) the workers may wait for their resources, e.g. "
        "for an autoscaler to replace a lost node, before the run stops with an error (continue it later with "
        "--resume). Counted in Ray Train's start attempts of RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s) each, "
        "at least one."
    )

    @field_validator("lr_scheduler")
    @classmethod
    def _check_scheduler(cls, value: str) -> str:
        if value not in LR_SCHEDULERS:
            close = difflib.get_close_matches(value.lower(), LR_SCHEDULERS, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"expected one of {', '.join(LR_SCHEDULERS)}, found {value!r}{hint}")
        return value

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


class SFTTraining(TrainingCommon):
    completion_only_loss: bool = Field(True, description="Loss on response tokens only (prompt tokens masked).")


class RMTraining(TrainingCommon):
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="Weight of the mean-squared-reward term that keeps rewards centred on zero."
    )


class PPOTraining(TrainingCommon):
    batch_size: PositiveInt = Field(8, description="Rollouts per PPO mini-batch per worker.")
    experience_batch_size: PositiveInt = Field(8, description="Prompts per worker per PPO iteration.")
    learning_rate: PositiveFloat = Field(1e-6, description="Peak learning rate of policy and value model.")
    kl_coeff: float = Field(0.05, ge=0, description="Weight of the per-token KL penalty against the reference.")
    kl_estimator: Literal["k1", "k3"] = Field("k1", description="Per-token KL estimator in the reward.")
    target_kl: float | None = Field(
        None, gt=0, description="Adapt kl_coeff toward this KL per sequence (leave out for a fixed kl_coeff)."
    )
    kl_horizon: PositiveInt = Field(10000, description="Horizon (episodes) of the adaptive KL controller.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount factor in GAE.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    cliprange: PositiveFloat = Field(0.2, description="PPO policy ratio clip range.")
    cliprange_value: PositiveFloat = Field(0.2, description="Value prediction clip range.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    entropy_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus.")
    ppo_epochs: PositiveInt = Field(4, description="Optimisation passes over each batch of rollouts.")
    num_mini_batches: PositiveInt = Field(1, description="Mini-batches per PPO epoch.")
    whiten_rewards: bool = Field(False, description="Whiten the per-token rewards before GAE.")
    missing_eos_penalty: float | None = Field(
        None, ge=0, description="Subtracted from the score of responses that never emit the stop token."
    )
    score_clip: float | None = Field(None, gt=0, description="Clip reward-model scores to [-score_clip, score_clip].")
    normalize_scores: bool = Field(
        False, description="Normalise scores with the reward mean/std stored in the RM export."
    )
    value_model_init: Literal["reward", "policy"] = Field(
        "reward", description="Initialise the value model from the reward model (default) or the policy."
    )
    sample_every_steps: NonNegativeInt = Field(
        10, description="Every N PPO iterations, log a few (prompt, response, score) samples (0: never)."
    )


# ----------------------------------------------------------------------------------------------- [generation]


class GenerationConfig(_Section):
    max_new_tokens: PositiveInt = Field(32, description="Response length limit during rollouts.")
    temperature: PositiveFloat = Field(0.7, description="Sampling temperature (also applied to log-probs).")
    top_k: NonNegativeInt = Field(0, description="Top-k sampling (0: off).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling probability mass (1.0: off).")
    do_sample: bool = Field(True, description="Sample (true) or decode greedily (false).")
    stop_token: str | None = Field(None, description="Stop generation at this token instead of EOS.")


# ----------------------------------------------------------------------------------------------- stage configs

_SECTION_ALIASES = {"General": "general", "Dataset": "dataset", "Training": "training", "Generation": "generation"}


class _StageConfig(BaseModel):
    model_config = _MODEL_CONFIG

    stage: str

    @model_validator(mode="before")
    @classmethod
    def _accept_seed_section_names(cls, data: object) -> object:
        if isinstance(data, dict):
            data = dict(data)
            for seed_name, name in _SECTION_ALIASES.items():
                if seed_name in data and name not in data:
                    data[name] = data.pop(seed_name)
        return data


class SFTConfig(_StageConfig):
    stage: Literal["sft"] = "sft"
    general: ModelGeneral
    dataset: DatasetConfig
    training: SFTTraining = Field(default_factory=SFTTraining)


class RMConfig(_StageConfig):
    stage: Literal["rm"] = "rm"
    general: ModelGeneral
    dataset: DatasetConfig
    training: RMTraining = Field(default_factory=RMTraining)


class PPOConfig(_StageConfig):
    stage: Literal["ppo"] = "ppo"
    general: PPOGeneral
    dataset: DatasetConfig
    training: PPOTraining = Field(default_factory=PPOTraining)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)

    @property
    def policy_source(self) -> str:
        """Where the policy is loaded from: the SFT export when given, else ``model_name``."""
        return str(self.general.model_pretrain) if self.general.model_pretrain else self.general.model_name

    @property
    def reward_source(self) -> str:
        """Where the reward model is loaded from: the RM export when given, else ``rm_name``."""
        return str(self.general.rm_pretrain) if self.general.rm_pretrain else self.general.rm_name


StageConfig = Union[SFTConfig, RMConfig, PPOConfig]

CONFIG_CLASSES: dict[str, type[_StageConfig]] = {"sft": SFTConfig, "rm": RMConfig, "ppo": PPOConfig}
