"""The ``sft`` stage: supervised fine-tuning on (instruction, response) examples or chat messages."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field

from rlhfctl.config.schema.common import (
    DatasetConfig,
    ModelGeneral,
    TrainFile,
    TrainingCommon,
)
from rlhfctl.config.schema.stage import StageConfigBase
from rlhfctl.config.schema.lora import LoraConfig


class SFTDataset(DatasetConfig):
    train_file: TrainFile = Field(
        description='Examples, one JSON object per line: {"instruction", "response"} or {"messages": [{"role", '
                    '"content"}, ...]}.'
    )


class SFTTraining(TrainingCommon):
    completion_only_loss: bool = Field(True, description="Loss on response tokens only (prompt tokens masked).")


class SFTConfig(StageConfigBase):
    summary: ClassVar[str] = ("rlhfctl supervised fine-tuning (SFT) config: teaches the base model to answer "
                              "instructions.")

    stage: Literal["sft"] = "sft"
    general: ModelGeneral
    dataset: SFTDataset
    training: SFTTraining = Field(default_factory=SFTTraining)
    lora: Optional[LoraConfig] = None
