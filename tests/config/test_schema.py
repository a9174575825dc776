"""Schema facts that other modules rely on: scheduler names, strict types, stage properties, the stage list."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import ValidationError

from rlhfctl.config.keys import default_value, first_sentence, is_required, stage_fields
from rlhfctl.config.schema import (
    CONFIG_CLASSES,
    LR_SCHEDULERS,
    OPTIMIZERS,
    STAGES,
    DatasetConfig,
    PPOConfig,
    PPOTraining,
    RMTraining,
    Stage,
    StageConfig,
    TrainingCommon,
)

# Schedulers driven by a metric rather than by the step count: deliberately not offered.
METRIC_DRIVEN = {"reduce_lr_on_plateau", "greedy"}


def test_lr_schedulers_are_exactly_the_step_schedulers_transformers_builds_without_extra_arguments() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    known = {member.value for member in transformers.SchedulerType}
    assert set(LR_SCHEDULERS) <= known
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for name in LR_SCHEDULERS:
        scheduler = transformers.get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=10)
        optimizer.step()
        scheduler.step()
    for name in known - set(LR_SCHEDULERS) - METRIC_DRIVEN:
        with pytest.raises((TypeError, ValueError)):  # needs arguments our config does not carry
            transformers.get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=10)


def test_optimizer_allow_list() -> None:
    assert OPTIMIZERS == ("AdamW", "Adam", "SGD")
    with pytest.raises(ValidationError):
        TrainingCommon(optimizer="torch.optim.AdamW")


def test_types_are_strict_but_ints_count_as_numbers() -> None:
    training = RMTraining(learning_rate=1, resources_per_worker={"cpu": 2, "gpu": 1})
    assert training.learning_rate == 1.0
    assert training.resources_per_worker == {"CPU": 2.0, "GPU": 1.0}
    assert training.use_gpu and training.cpus_per_worker == 2.0
    for bad in ({"epochs": "2"}, {"epochs": True}, {"learning_rate": "1e-5"}, {"max_grad_norm": float("nan")}):
        with pytest.raises(ValidationError):
            RMTraining(**bad)


def test_normalize_scores_is_true_false_or_auto_and_nothing_else() -> None:
    assert PPOTraining().normalize_scores == "auto"
    for value in (True, False, "auto"):
        assert PPOTraining(normalize_scores=value).normalize_scores == value
    for bad in ("yes", "true", 1, 0, None):
        with pytest.raises(ValidationError, match='expected true, false or "auto"'):
            PPOTraining(normalize_scores=bad)


def test_ppo_sources_prefer_the_exports(tmp_path) -> None:
    config = PPOConfig.model_validate({
        "general": {"model_name": "m", "rm_name": "r", "output_dir": "o", "checkpoint_dir": "c",
                    "model_pretrain": str(tmp_path / "sft"), "rm_pretrain": str(tmp_path / "rm")},
        "dataset": {"train_file": "p.jsonl"},
    })
    assert config.policy_source == str(tmp_path / "sft")
    assert config.reward_source == str(tmp_path / "rm")


def test_stages_are_derived_from_the_stage_config_classes() -> None:
    assert STAGES == get_args(Stage) == tuple(CONFIG_CLASSES)
    assert tuple(CONFIG_CLASSES.values()) == get_args(StageConfig)
    for stage, cls in CONFIG_CLASSES.items():
        assert cls.stage_name() == stage and cls.summary.startswith("rlhfctl ")
        assert list(cls.sections())[:3] == ["general", "dataset", "training"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_key_the_template_cannot_show_by_default_has_an_example(stage: str) -> None:
    """A required key needs an example (the template's value), an optional one too (its commented-out line)."""
    for key, field in stage_fields(stage).items():
        if is_required(field) or default_value(field) is None:
            assert field.examples, f"{stage}: {key} needs examples=[...] in its Field"
        assert field.description and first_sentence(field.description).endswith("."), key


def test_exclusive_keys_are_enforced_by_the_section() -> None:
    with pytest.raises(ValidationError, match="not both"):
        DatasetConfig(train_file="t", validation_file="v", validation_split_percentage=5)
    assert DatasetConfig(train_file="t", validation_file="v").validation_split_percentage == 5.0
