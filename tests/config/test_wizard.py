"""InitAnswers -> commented config: values land in the right keys, paths follow the config's folder."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from rlhfctl.config.wizard import InitAnswers, render_config
from rlhfctl.errors import ConfigError


def test_answers_fill_the_stage_keys() -> None:
    answers = InitAnswers("ppo", model="pol", rm_model="rew", rm_pretrain="checkpoints/rm", train_file="p.jsonl",
                          validation_file="v.jsonl", output_dir="runs/x", checkpoint_dir="ck/x", workers=3,
                          cpus_per_worker=2.0, use_gpu=True, learning_rate=2e-6, epochs=2, batch_size=4,
                          kl_coeff=0.2, max_new_tokens=16)
    data = tomllib.loads(render_config(answers))
    assert data["general"] == {"model_name": "pol", "rm_name": "rew", "rm_pretrain": "checkpoints/rm",
                               "output_dir": "runs/x", "checkpoint_dir": "ck/x", "seed": 42}
    assert data["dataset"]["validation_file"] == "v.jsonl"
    assert "validation_split_percentage" not in data["dataset"]
    assert data["training"]["resources_per_worker"] == {"CPU": 2, "GPU": 1}
    assert (data["training"]["num_training_workers"], data["training"]["learning_rate"]) == (3, 2e-6)
    assert (data["training"]["epochs"], data["training"]["batch_size"], data["training"]["kl_coeff"]) == (2, 4, 0.2)
    assert data["generation"]["max_new_tokens"] == 16
    assert answers.missing() == []


def test_unset_answers_keep_the_template_values() -> None:
    answers = InitAnswers("sft", epochs=3)
    data = tomllib.loads(render_config(answers))
    assert data["training"]["epochs"] == 3
    assert data["general"]["base_model"] == "openai-community/gpt2"
    assert "kl_coeff" in InitAnswers("ppo").missing() and "kl_coeff" not in answers.missing()
    assert "model" in answers.missing()


def test_invalid_answers_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="training.learning_rate: must be greater than 0"):
        render_config(InitAnswers("rm", learning_rate=-1.0), shown_as="rm.toml (not written)")


def test_paths_typed_in_the_current_directory_are_rewritten_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    answers = InitAnswers("rm", model="models/tiny", train_file="data/rm.jsonl", output_dir="/abs/runs")
    moved = answers.relative_to(tmp_path / "configs", tmp_path)
    assert moved.model == "../models/tiny"
    assert moved.train_file == "../data/rm.jsonl"
    assert moved.output_dir == "/abs/runs"
    same_dir = answers.relative_to(tmp_path, tmp_path)
    assert same_dir.model == "./models/tiny"  # "./" so the loader treats it as a folder, not a hub id
    assert InitAnswers("rm", model="org/name").relative_to(tmp_path / "c", tmp_path).model == "org/name"
