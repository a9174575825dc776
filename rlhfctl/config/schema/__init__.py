"""Typed configuration of every stage: the single source of truth for config keys.

One TOML file configures one stage. Sections follow the workflow rlhfctl replaces (``[general]``, ``[dataset]``,
``[training]``; the seed's ``General``/``Dataset``/``Training`` spellings are accepted) plus ``[generation]`` for
PPO, ``[monitor]`` (the health checks) in every stage, and the optional ``[lora]`` of every training stage
(present: LoRA on). Every model forbids unknown keys; the loader turns pydantic's errors into
:class:`rlhfctl.errors.ConfigIssue` objects with "did you mean" suggestions.

Everything else about a key is derived from its field here (see :mod:`rlhfctl.config.keys`): path keys and model
sources (from the type), files that must exist, the stage a file is for (its keys unique to one stage), the
templates in ``templates/`` (:mod:`rlhfctl.config.templates`), the reference in ``docs/config-reference.md``
(:mod:`rlhfctl.config.reference`) and ``rlhfctl init``'s questions and flags (:class:`markers.Ask`).

Adding a stage: write ``schema/<stage>.py`` (its sections and a ``StageConfigBase`` subclass, as ``rm.py`` does),
add the class to :data:`StageConfig` and its name to :data:`Stage` below, then regenerate the templates and the
reference.

Nothing here imports torch, ray or transformers: validating a config must stay fast.
"""

from __future__ import annotations

from typing import Literal, Union, get_args

from rlhfctl.config.schema.common import (
    LR_SCHEDULERS,
    OPTIMIZERS,
    DatasetConfig,
    GeneralCommon,
    TRACKERS,
    MixedPrecision,
    ModelGeneral,
    NonNegativeInt,
    Optimizer,
    PositiveFloat,
    PositiveInt,
    Section,
    Tracker,
    TrainingCommon,
)
from rlhfctl.config.schema.monitor import MonitorConfig
from rlhfctl.config.schema.stage import StageConfigBase, seed_spellings
from rlhfctl.config.schema.dpo import DPOConfig, DPODataset, DPOGeneral, DPOTraining
from rlhfctl.config.schema.grpo import GRPOConfig, GRPOGeneral, GRPOTraining, RewardConfig
from rlhfctl.config.schema.lora import ALL_LINEAR, LoraConfig
from rlhfctl.config.schema.ppo import GenerationConfig, PPOConfig, PPODataset, PPOGeneral, PPOTraining
from rlhfctl.config.schema.rm import RMConfig, RMDataset, RMTraining
from rlhfctl.config.schema.sft import SFTConfig, SFTDataset, SFTTraining

StageConfig = Union[SFTConfig, RMConfig, PPOConfig, DPOConfig, GRPOConfig]
Stage = Literal["sft", "rm", "ppo", "dpo", "grpo"]

CONFIG_CLASSES: dict[str, type[StageConfigBase]] = {cls.stage_name(): cls for cls in get_args(StageConfig)}
STAGES: tuple[str, ...] = tuple(CONFIG_CLASSES)

SECTION_ALIASES: dict[str, str] = seed_spellings(
    list(dict.fromkeys(name for cls in CONFIG_CLASSES.values() for name in cls.sections()))
)
"""The seed workflow's section spellings (``General``) -> ours (``general``)."""

__all__ = [
    "ALL_LINEAR",
    "CONFIG_CLASSES",
    "LR_SCHEDULERS",
    "OPTIMIZERS",
    "SECTION_ALIASES",
    "STAGES",
    "DPOConfig",
    "DPODataset",
    "DPOGeneral",
    "DPOTraining",
    "TRACKERS",
    "DatasetConfig",
    "GeneralCommon",
    "GRPOConfig",
    "GRPOGeneral",
    "GRPOTraining",
    "GenerationConfig",
    "LoraConfig",
    "MixedPrecision",
    "ModelGeneral",
    "MonitorConfig",
    "NonNegativeInt",
    "Optimizer",
    "PPOConfig",
    "PPODataset",
    "PPOGeneral",
    "PPOTraining",
    "PositiveFloat",
    "PositiveInt",
    "RMConfig",
    "RMDataset",
    "RMTraining",
    "RewardConfig",
    "SFTConfig",
    "SFTDataset",
    "SFTTraining",
    "Section",
    "Stage",
    "StageConfig",
    "StageConfigBase",
    "Tracker",
    "TrainingCommon",
]
