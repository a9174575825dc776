"""The ``dpo`` stage: the policy trained directly on preference pairs (DPO, IPO, hinge), no reward model."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from rlhfctl.config.schema.common import (
    BatchSize,
    DatasetConfig,
    LearningRate,
    ModelGeneral,
    ModelSource,
    TrainFile,
    TrainingCommon,
)
from rlhfctl.config.schema.stage import StageConfigBase
from rlhfctl.config.schema.lora import LoraConfig

LossType = Literal["sigmoid", "ipo", "hinge"]


class DPOGeneral(ModelGeneral):
    """``[general]`` of the DPO stage: the policy to start from and, optionally, a different reference model."""

    ref_model: Optional[ModelSource] = Field(
        None, examples=["checkpoints/sft"],
        description="The frozen reference model (leave out: base_model, the policy before training). Its log-probs "
                    "are computed once per pair before training, so it is not kept in memory while training.",
    )


class DPODataset(DatasetConfig):
    train_file: TrainFile = Field(
        description='Preference pairs, one JSON object per line: {"instruction", "chosen", "rejected"} ("prompt" '
                    "also accepted; what rlhfctl data convert --to rm writes)."
    )


class DPOTraining(TrainingCommon):
    learning_rate: LearningRate = Field(1e-6, description="Peak learning rate of the policy.")
    batch_size: BatchSize = Field(8, description="Pairs per worker per micro-step.")
    beta: float = Field(
        0.1, gt=0,
        description="Strength of the tie to the reference model: the implicit reward is beta * (log pi - log "
                    "pi_ref). For IPO it is the regularisation tau of the target margin 1 / (2 beta).",
    )
    loss_type: LossType = Field(
        "sigmoid",
        description='"sigmoid" (DPO, Rafailov et al. 2023), "ipo" (Azar et al. 2023, per-token log-ratios) or '
                    '"hinge" (SLiC, Zhao et al. 2023).',
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5,
        description="Conservative DPO (cDPO): the probability that a pair's preference label is flipped; only "
                    'with loss_type = "sigmoid".',
    )

    @model_validator(mode="after")
    def _smoothing_only_for_sigmoid(self) -> "DPOTraining":
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError(f'training.label_smoothing applies to loss_type = "sigmoid" only (found loss_type = '
                             f'"{self.loss_type}"); leave label_smoothing out or at 0')
        return self


class DPOConfig(StageConfigBase):
    summary: ClassVar[str] = ("rlhfctl DPO config: trains the policy directly on (instruction, chosen, rejected) "
                              "pairs against a frozen reference, no reward model.")

    stage: Literal["dpo"] = "dpo"
    general: DPOGeneral
    dataset: DPODataset
    training: DPOTraining = Field(default_factory=DPOTraining)
    lora: Optional[LoraConfig] = None

    @property
    def reference_source(self) -> str:
        """Where the reference model is loaded from: ``ref_model`` when given, else ``base_model``."""
        return self.general.ref_model or self.general.base_model

    @property
    def reference_is_policy(self) -> bool:
        """The reference is the policy before training (no ``ref_model``, or the same source)."""
        return self.general.ref_model is None or self.general.ref_model == self.general.base_model
