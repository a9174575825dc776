"""Schema facts that other modules rely on: scheduler names, strict types, stage properties."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rlhfctl.config.schema import LR_SCHEDULERS, OPTIMIZERS, PPOConfig, RMTraining, TrainingCommon

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


def test_ppo_sources_prefer_the_exports(tmp_path) -> None:
    config = PPOConfig.model_validate({
        "general": {"model_name": "m", "rm_name": "r", "output_dir": "o", "checkpoint_dir": "c",
                    "model_pretrain": str(tmp_path / "sft"), "rm_pretrain": str(tmp_path / "rm")},
        "dataset": {"train_file": "p.jsonl"},
    })
    assert config.policy_source == str(tmp_path / "sft")
    assert config.reward_source == str(tmp_path / "rm")
