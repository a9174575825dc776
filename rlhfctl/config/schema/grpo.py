"""The ``grpo`` stage: group-relative policy optimisation (GRPO, or RLOO's leave-one-out baseline), no value model.

Rewards come from a reward model (``general.rm_name`` / ``rm_pretrain``, as in PPO) and/or built-in verifiable
reward functions named in ``[reward]`` (``reward.functions``), each with a weight. Configs stay data: a function
is chosen by name from a fixed list; the only way to run Python of your own is ``name = "python"`` with an explicit
``function = "module:function"`` that you installed yourself and marked with ``@reward_function``.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from rlhfctl.config.schema.common import (
    BatchSize,
    Epochs,
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
from rlhfctl.config.schema.markers import LIVE_EXAMPLE, Ask, WizardStep
from rlhfctl.config.schema.ppo import GenerationConfig, PPODataset, PPOGeneral


class GRPOGeneral(PPOGeneral):
    """``[general]`` of the GRPO stage: as PPO's, but the reward model is optional (verifiable rewards only)."""

    rm_name: Annotated[
        Optional[ModelSource],
        Ask("Reward model architecture (hub id or local folder; empty: reward functions only):", WizardStep.MODELS,
            name="rm_model"),
        LIVE_EXAMPLE,
    ] = Field(
        None, examples=["openai-community/gpt2"],
        description="Hub id or local folder of the reward model's architecture; leave out (with rm_pretrain) to "
                    "reward with reward.functions only.",
    )


class GRPODataset(PPODataset):
    train_file: TrainFile = Field(
        description='Prompts, one JSON object per line: {"prompt": "..."}, plus the keys your reward functions '
                    'read (e.g. "answer" for exact_match).'
    )


class GRPOTraining(TrainingCommon):
    learning_rate: LearningRate = Field(1e-6, description="Peak learning rate of the policy.")
    epochs: Epochs = Field(1, description="Passes over the prompt data.")
    batch_size: BatchSize = Field(
        8, description="Completions per worker per forward/backward (bounds memory; a mini-batch is split into "
                       "micro-batches of this size)."
    )
    experience_batch_size: PositiveInt = Field(
        8, description="Prompts each worker rolls out per iteration; each gets num_generations completions."
    )
    num_generations: int = Field(
        4, ge=2, description="Completions per prompt (the group whose mean reward is the baseline); at least 2."
    )
    beta: float = Field(
        0.04, ge=0,
        description="Weight of the KL term (k3 estimator) toward the reference policy in the loss; 0 drops the "
                    "reference model entirely.",
    )
    epsilon: PositiveFloat = Field(0.2, description="Clip range of the per-token probability ratio.")
    scale_rewards: bool = Field(
        False, description="Divide each advantage by its group's reward std (the GRPO paper's and TRL's choice). Off "
                           "by default, as Dr. GRPO recommends: the division blows near-equal rewards up into full-size "
                           "advantages, so the policy chases noise (benchmarks/README.md: more reward-model gain per "
                           "episode at a third of the KL).")
    rloo: bool = Field(
        False, description="RLOO: the baseline of a completion is the mean reward of the others in its group "
                           "(leave-one-out) instead of the group mean."
    )
    loss_aggregation: Literal["token", "sequence"] = Field(
        "sequence",
        description='"sequence": the mean per completion, then over completions (the GRPO paper; every completion '
                    'weighs the same: more reward-model gain per episode at a lower KL in benchmarks/README.md); '
                    '"token": the mean over every completion token of a mini-batch (long completions weigh more, '
                    "DAPO, TRL's default).",
    )
    ppo_epochs: PositiveInt = Field(1, description="Optimisation passes over each iteration's completions.")
    num_mini_batches: PositiveInt = Field(
        1, description="Mini-batches (optimizer steps) per pass; each holds whole groups, so it must divide "
                       "experience_batch_size."
    )
    sample_every_steps: NonNegativeInt = Field(
        10, description="Every N iterations, log a few (prompt, response, reward) samples (0: never)."
    )


# ----------------------------------------------------------------------------------------------- [reward]


class _RewardFunction(Section):
    weight: float = Field(1.0, description="Weight of this function's reward in the sum.")


class ExactMatchReward(_RewardFunction):
    """1 when the response (or what ``extract`` finds in it) equals the prompt row's reference answer, else 0."""

    name: Literal["exact_match"]
    field: str = Field("answer", min_length=1, description="Key of the prompt row holding the reference answer.")
    extract: Optional[str] = Field(
        None, description="Regular expression: compare its last match in the response (its first group, if it "
                          "has one) instead of the whole response."
    )
    ignore_case: bool = Field(False, description="Compare case-insensitively.")

    @field_validator("extract")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return _check_pattern(value) if value is not None else None


class ContainsReward(_RewardFunction):
    """1 when the response contains ``text``, else 0."""

    name: Literal["contains"]
    text: str = Field(min_length=1, description="The text to look for.")
    ignore_case: bool = Field(False, description="Look case-insensitively.")


class RegexReward(_RewardFunction):
    """1 when ``pattern`` matches the response (anywhere, or all of it with ``full_match``), else 0."""

    name: Literal["regex"]
    pattern: str = Field(min_length=1, description="A Python regular expression.")
    full_match: bool = Field(False, description="The pattern must match the whole response.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _check_pattern(value)


class LengthReward(_RewardFunction):
    """1 when the response has ``min_tokens`` to ``max_tokens`` tokens, else 0."""

    name: Literal["length"]
    min_tokens: NonNegativeInt = Field(0, description="Fewest response tokens that earn the reward.")
    max_tokens: Optional[PositiveInt] = Field(None, description="Most response tokens that earn the reward.")

    @model_validator(mode="after")
    def _ordered(self) -> "LengthReward":
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be at least min_tokens ({self.min_tokens})")
        return self


class PythonReward(_RewardFunction):
    """A reward function of your own: RUNS YOUR CODE. ``function = "package.module:name"`` names a function you
    installed (importable on every worker) and marked with ``@rlhfctl.objectives.rewards.reward_function``; it is
    called as ``name(prompt, response, row) -> float``."""

    name: Literal["python"]
    function: str = Field(description='"package.module:function" of an installed, @reward_function-marked function.')

    @field_validator("function")
    @classmethod
    def _module_colon_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*", value):
            raise ValueError(f'expected "package.module:function", found {value!r}')
        return value


RewardFunction = Annotated[
    Union[ExactMatchReward, ContainsReward, RegexReward, LengthReward, PythonReward], Field(discriminator="name")
]
REWARD_FUNCTION_NAMES: tuple[str, ...] = ("exact_match", "contains", "regex", "length", "python")


def _check_pattern(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc})") from None
    return pattern


class RewardConfig(Section):
    """``[reward]``: what a completion's reward is (a weighted sum)."""

    model_weight: float = Field(
        1.0, ge=0, description="Weight of the reward model's score (used when general.rm_name or rm_pretrain is set)."
    )
    functions: list[RewardFunction] = Field(
        default_factory=list,
        examples=[[{"name": "contains", "text": "Hope that helps", "weight": 1.0}]],
        description="Verifiable reward functions, each a table with a name (exact_match, contains, regex, length, "
                    "python) and a weight; write one [[reward.functions]] table each.",
    )


class GRPOConfig(StageConfigBase):
    summary: ClassVar[str] = ("rlhfctl GRPO config: improves the policy with group-relative advantages from a "
                              "reward model and/or verifiable reward functions, no value model.")

    stage: Literal["grpo"] = "grpo"
    general: GRPOGeneral
    dataset: GRPODataset
    training: GRPOTraining = Field(default_factory=GRPOTraining)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    lora: Optional[LoraConfig] = None

    @model_validator(mode="after")
    def _some_reward(self) -> "GRPOConfig":
        if self.reward_source is None and not self.reward.functions:
            raise ValueError("GRPO needs a reward: set general.rm_name (and rm_pretrain) for a reward model, "
                             "and/or list reward.functions")
        return self

    @property
    def policy_source(self) -> str:
        """Where the policy is loaded from: the SFT export when given, else ``model_name``."""
        return str(self.general.model_pretrain) if self.general.model_pretrain else self.general.model_name

    @property
    def reward_source(self) -> str | None:
        """Where the reward model is loaded from (the RM export, else ``rm_name``), or None without one."""
        if self.general.rm_pretrain:
            return str(self.general.rm_pretrain)
        return self.general.rm_name

    @property
    def uses_reward_model(self) -> bool:
        return self.reward_source is not None and self.reward.model_weight > 0
