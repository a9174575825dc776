"""The ``ppo`` stage: the policy improved against a reward model, with a KL penalty toward the reference policy."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Optional, Union

from pydantic import Field, field_validator

from rlhfctl.config.schema.common import (
    BatchSize,
    DatasetConfig,
    Epochs,
    ExportFolder,
    GeneralCommon,
    LearningRate,
    ModelSource,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Section,
    TrainFile,
    TrainingCommon,
)
from rlhfctl.config.schema.stage import StageConfigBase
from rlhfctl.config.schema.lora import LoraConfig
from rlhfctl.config.schema.markers import Ask, WizardStep

_GPT2 = "openai-community/gpt2"


class PPOGeneral(GeneralCommon):
    """``[general]`` of the PPO stage: the policy and the reward model, each from a hub id or an earlier export."""

    model_name: Annotated[
        ModelSource, Ask("Policy model (hub id or local folder):", WizardStep.MODELS, name="model")
    ] = Field(examples=[_GPT2], description="Hub id or local folder of the policy model and its tokenizer.")
    model_pretrain: Annotated[
        Optional[ExportFolder], Ask("SFT export to start the policy from (empty: none):", WizardStep.MODELS)
    ] = Field(
        None, examples=["checkpoints/sft"],
        description="SFT export to start the policy from (rlhfctl sft train's checkpoint_dir); leave out to use "
                    "model_name as is.",
    )
    rm_name: Annotated[
        ModelSource, Ask("Reward model architecture (hub id or local folder):", WizardStep.MODELS, name="rm_model")
    ] = Field(examples=[_GPT2], description="Hub id or local folder of the reward model's architecture.")
    rm_pretrain: Annotated[
        Optional[ExportFolder], Ask("Reward-model export to score with (empty: none):", WizardStep.MODELS)
    ] = Field(
        None, examples=["checkpoints/rm"],
        description="Reward-model export to score with (rlhfctl rm train's checkpoint_dir); leave out to use "
                    "rm_name as is.",
    )


class PPODataset(DatasetConfig):
    train_file: TrainFile = Field(
        description='Prompts, one JSON object per line: {"prompt": "..."} (other keys are ignored).'
    )


class PPOTraining(TrainingCommon):
    learning_rate: LearningRate = Field(1e-6, description="Peak learning rate of the policy and the value model.")
    epochs: Epochs = Field(1, description="Passes over the prompt data.")
    batch_size: BatchSize = Field(8, description="Rollouts per PPO mini-batch per worker.")
    experience_batch_size: PositiveInt = Field(8, description="Prompts each worker rolls out per PPO iteration.")
    kl_coeff: Annotated[
        float, Ask("KL penalty coefficient (kl_coeff):", WizardStep.OPTIMISATION)
    ] = Field(0.05, ge=0, description="Weight of the per-token KL penalty against the reference (initial) policy "
                                      "at the start; the KL controller adapts it toward target_kl.")
    kl_estimator: Literal["k1", "k3"] = Field("k1", description="Per-token KL estimator in the reward.")
    target_kl: float = Field(
        2.5, ge=0,
        description="KL budget in nats per response: kl_coeff is adapted so that the KL to the reference policy "
        "settles here (0: a fixed kl_coeff). The KL is the kl_k1 metric: the sum over a response's tokens at the "
        "sampling temperature. Ziegler et al.'s proportional controller: after each iteration kl_coeff is "
        "multiplied by 1 + clip(KL / target_kl - 1, -0.2, 0.2) * episodes / kl_horizon. Raise it for longer "
        "responses, or to trade more KL for more reward.",
    )
    kl_horizon: PositiveInt = Field(
        256, description="Horizon (episodes) of the KL controller: the smaller, the faster kl_coeff follows the KL; "
        "at most a factor e^(0.2 * episodes / kl_horizon) over a run."
    )
    gamma: float = Field(1.0, ge=0, le=1, description="Discount factor in GAE.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    cliprange: PositiveFloat = Field(0.2, description="PPO policy-ratio clip range.")
    cliprange_value: PositiveFloat = Field(0.2, description="Value prediction clip range.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    entropy_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus.")
    ppo_epochs: PositiveInt = Field(4, description="Optimisation passes over each batch of rollouts.")
    num_mini_batches: PositiveInt = Field(1, description="Mini-batches per PPO epoch.")
    whiten_rewards: bool = Field(False, description="Whiten the per-token rewards before GAE.")
    missing_eos_penalty: Optional[float] = Field(
        None, ge=0, examples=[1.0],
        description="Subtracted from the score of responses that never emit the stop token.",
    )
    score_clip: Optional[float] = Field(
        None, gt=0, examples=[10.0], description="Clip reward-model scores to [-score_clip, score_clip]."
    )
    normalize_scores: Union[bool, Literal["auto"]] = Field(
        "auto", description='Divide reward-model scores by the reward std (after subtracting the mean) stored in the '
        'RM export\'s reward_stats.json, so that kl_coeff and score_clip mean the same for any reward model: "auto" '
        "(when general.rm_pretrain has that file), true (required: an error without it) or false."
    )

    @field_validator("normalize_scores", mode="before")
    @classmethod
    def _auto_or_bool(cls, value: object) -> object:
        if value is True or value is False or value == "auto":
            return value
        raise ValueError(f'expected true, false or "auto", found {value!r}')

    value_warmup_steps: NonNegativeInt = Field(
        0, description="PPO iterations at the start that train only the value model (the policy waits, so its "
        "first updates get advantages from a fitted critic; 0: none). Their rollouts count toward the epochs."
    )
    value_model_init: Literal["reward", "policy"] = Field(
        "reward", description="Initialise the value model from the reward model (default) or the policy."
    )
    sample_every_steps: NonNegativeInt = Field(
        10, description="Every N PPO iterations, log a few (prompt, response, score) samples (0: never)."
    )


class GenerationConfig(Section):
    """``[generation]``: how the policy samples responses during rollouts."""

    max_new_tokens: Annotated[
        PositiveInt, Ask("Maximum new tokens per response:", WizardStep.OPTIMISATION)
    ] = Field(32, description="Response length limit during rollouts.")
    temperature: PositiveFloat = Field(0.7, description="Sampling temperature (also applied to the log-probs).")
    top_k: NonNegativeInt = Field(0, description="Top-k sampling (0: off).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling probability mass (1.0: off).")
    do_sample: bool = Field(True, description="Sample (true) or decode greedily (false).")
    stop_token: Optional[str] = Field(
        None, examples=["\n"], description="Stop generation at this token instead of EOS."
    )
    backend: Literal["builtin", "vllm"] = Field(
        "builtin", description='Who samples the rollouts: "builtin" (rlhfctl\'s own decoder, no extra dependency) or '
        '"vllm" (GPUs only, pip install \'rlhfctl[vllm]\': one vLLM engine per worker on the worker\'s own GPU, fed '
        "the policy's weights after every update; the same sampling settings, the old log-probs still from the "
        "policy's own forward). Not with training.strategy = \"fsdp\".",
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, lt=1, description='With backend = "vllm": the fraction of each GPU\'s memory the engine reserves for '
        "its copy of the policy and its KV cache; training gets the rest (the --dry-run plan subtracts it).",
    )
    vllm_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description='With backend = "vllm": the engine\'s weight dtype ("auto": vLLM\'s choice from the model\'s '
        'config; "float32" samples closest to the policy\'s fp32 weights, at twice the memory of 16 bits).',
    )
    vllm_sleep_between_rollouts: bool = Field(
        False, description='With backend = "vllm": offload the engine\'s weights to CPU memory and free its KV cache '
        "while the policy trains (vLLM's sleep mode): the GPU memory training gets back, for a copy per rollout.",
    )


class PPOConfig(StageConfigBase):
    summary: ClassVar[str] = ("rlhfctl PPO config: improves the policy against a reward model, with a KL penalty "
                              "toward the reference policy.")

    stage: Literal["ppo"] = "ppo"
    general: PPOGeneral
    dataset: PPODataset
    training: PPOTraining = Field(default_factory=PPOTraining)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    lora: Optional[LoraConfig] = None

    @property
    def policy_source(self) -> str:
        """Where the policy is loaded from: the SFT export when given, else ``model_name``."""
        return str(self.general.model_pretrain) if self.general.model_pretrain else self.general.model_name

    @property
    def reward_source(self) -> str:
        """Where the reward model is loaded from: the RM export when given, else ``rm_name``."""
        return str(self.general.rm_pretrain) if self.general.rm_pretrain else self.general.rm_name
