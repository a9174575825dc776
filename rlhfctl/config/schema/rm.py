"""The ``rm`` stage: a reward model learnt from (instruction, chosen, rejected) preference pairs."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field

from rlhfctl.config.schema.common import (
    BatchSize,
    DatasetConfig,
    ModelGeneral,
    TrainFile,
    TrainingCommon,
)
from rlhfctl.config.schema.stage import StageConfigBase
from rlhfctl.config.schema.lora import LoraConfig


class RMDataset(DatasetConfig):
    train_file: TrainFile = Field(
        description='Preference pairs, one JSON object per line: {"instruction", "chosen", "rejected"} ("prompt" '
                    "also accepted)."
    )


class RMTraining(TrainingCommon):
    batch_size: BatchSize = Field(8, description="Pairs per worker per micro-step.")
    center_rewards_coefficient: Optional[float] = Field(
        None, ge=0, examples=[0.01],
        description="Weight of the mean-squared-reward term that keeps rewards centred on zero.",
    )


class RMConfig(StageConfigBase):
    summary: ClassVar[str] = ("rlhfctl reward-model (RM) config: learns a scalar reward from (instruction, chosen, "
                              "rejected) pairs.")

    stage: Literal["rm"] = "rm"
    general: ModelGeneral
    dataset: RMDataset
    training: RMTraining = Field(default_factory=RMTraining)
    lora: Optional[LoraConfig] = None
