"""Schema facts that other modules rely on: scheduler names, strict types, stage properties, the stage list."""

from __future__ import annotations

import dataclasses
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
    MonitorConfig,
    PPOConfig,
    PPOTraining,
    RMTraining,
    Stage,
    StageConfig,
    TrainingCommon,
)
from rlhfctl.monitor import HealthSettings

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


# ----------------------------------------------------------------------------------------------- [monitor]


def test_every_stage_has_the_monitor_section_after_its_own_sections() -> None:
    for stage, config_class in CONFIG_CLASSES.items():
        assert list(config_class.sections())[-1] == "monitor", stage
        assert config_class.sections()["monitor"] is MonitorConfig


def test_monitor_keys_are_the_health_settings_with_the_same_defaults() -> None:
    """One source of defaults: the library's; every setting but the length limit (generation.max_new_tokens) is a
    [monitor] key of the same name."""
    library = {field.name: field.default for field in dataclasses.fields(HealthSettings)}
    assert library.pop("max_response_tokens") is None
    assert {name: field.default for name, field in MonitorConfig.model_fields.items()} == library
    assert MonitorConfig().health_settings() == HealthSettings()


def test_monitor_section_converts_to_health_settings_golden() -> None:
    section = MonitorConfig.model_validate({
        "enabled": True, "nonfinite_action": "warn", "kl_max": 12.5, "kl_patience": 4, "kl_action": "warn",
        "entropy_min_ratio": 0.2, "entropy_baseline_steps": 3, "entropy_patience": 6, "entropy_action": "stop",
        "divergence_min_drop": 0.25, "divergence_patience": 3, "divergence_action": "stop",
        "length_limit_ratio": 0.9, "length_patience": 2, "length_action": "stop", "ngram_size": 3,
        "ngram_repeat_max": 0.4, "ngram_response_share": 0.6, "ngram_action": "stop",
        "explained_variance_warmup_steps": 0, "explained_variance_patience": 7, "explained_variance_action": "stop",
        "length_bias_max": 0.3, "length_bias_action": "stop",
    })
    assert section.health_settings(max_response_tokens=48) == HealthSettings(
        enabled=True, nonfinite_action="warn", kl_max=12.5, kl_patience=4, kl_action="warn", entropy_min_ratio=0.2,
        entropy_baseline_steps=3, entropy_patience=6, entropy_action="stop", divergence_min_drop=0.25,
        divergence_patience=3, divergence_action="stop", max_response_tokens=48, length_limit_ratio=0.9,
        length_patience=2, length_action="stop", ngram_size=3, ngram_repeat_max=0.4, ngram_response_share=0.6,
        ngram_action="stop", explained_variance_warmup_steps=0, explained_variance_patience=7,
        explained_variance_action="stop", length_bias_max=0.3, length_bias_action="stop")
    assert MonitorConfig(kl_max=3.0).health_settings() == HealthSettings(kl_max=3.0)


@pytest.mark.parametrize("key, value", [("kl_action", "halt"), ("kl_max", 0.0), ("entropy_min_ratio", 1.5),
                                        ("kl_patience", 0), ("length_bias_max", -0.1), ("enabled", "yes")])
def test_monitor_section_refuses_what_the_library_would(key: str, value: object) -> None:
    with pytest.raises(ValidationError) as error:
        MonitorConfig.model_validate({key: value})
    assert error.value.errors()[0]["loc"] == (key,)
