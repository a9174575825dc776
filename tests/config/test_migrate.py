"""llm-on-ray configs -> TOML: the seed's reward.conf / ppo.conf, a finetune YAML, and every quirk reported."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from rlhfctl.config.loader import load_config
from rlhfctl.config.migrate import migrate_config
from rlhfctl.errors import ConfigError, UserError

REWARD_CONF = """\
{
    "General": {
        "base_model": "EleutherAI/gpt2",
        "output_dir": "/tmp/llm-ray/output/rm",
        "checkpoint_dir": "/tmp/llm-ray/checkpoint/rm"
    },
    "Dataset": {
        "train_file": "examples/data/sample_rm_data.jsonl",
        "validation_file": None,
        "validation_split_percentage": 5
    },
    "Training": {
        "optimizer": "AdamW",
        "batch_size": 2,
        "epochs": 3,
        "learning_rate": 1e-5,
        "lr_scheduler": "linear",
        "weight_decay": 0.01,  # never reached the optimizer in llm-on-ray
        "num_training_workers": 2,
        "resources_per_worker": {
            "CPU": 32
        },
    },
}
"""

PPO_CONF = """\
# I am python, not json
{
    "General": {
        "model_name": "EleutherAI/gpt2",
        "model_pretrain": None,
        "rm_name": "EleutherAI/gpt2",
        "rm_pretrain": None,
    },
    'Dataset': {
        'train_file': 'examples/data/sample_ppo_data.jsonl',
        'validation_file': None,
        'validation_split_percentage': 5
    },
    "Training": {
        "optimizer": "AdamW",
        "experience_batch_size": 2,
        "training_iteration": 1000,
        "learning_rate": 1e-5,
        "kl_coeff": 0.2,
        "num_training_workers": 2,
        "resources_per_worker": {
            "CPU": 56
        },
    },
}
"""

FINETUNE_YAML = """\
General:
  base_model: EleutherAI/gpt-j-6b
  gpt_base_model: true
  output_dir: /tmp/llm-ray/output
  save_strategy: no
  config:
    trust_remote_code: false
    use_auth_token: null
  enable_gradient_checkpointing: true
  lora_config:
    task_type: CAUSAL_LM
    r: 8
    lora_alpha: 32
    lora_dropout: 0.1
    target_modules: [q_proj, v_proj]
    bias: none
Dataset:
  train_file: examples/data/sample_finetune_data_small.jsonl
  group: true
  max_length: 512
  validation_file: null
  validation_split_percentage: 5
Training:
  optimizer: adamw_torch
  batch_size: 2
  epochs: 3
  learning_rate: 1.0e-05
  lr_scheduler: linear
  weight_decay: 0.0
  mixed_precision: bf16
  device: cpu
  num_training_workers: 2
  resources_per_worker:
    CPU: 32
  gradient_accumulation_steps: 1
  logging_steps: 10
  seed: 7
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _notes(result) -> dict[str, tuple[str, str]]:
    return {note.key: (note.kind, note.message) for note in result.notes}


def test_reward_conf(tmp_path: Path) -> None:
    result = migrate_config(_write(tmp_path, "reward.conf", REWARD_CONF))
    assert result.stage == "rm"
    assert result.data["general"] == {"base_model": "EleutherAI/gpt2", "output_dir": "/tmp/llm-ray/output/rm",
                                      "checkpoint_dir": "/tmp/llm-ray/checkpoint/rm"}
    assert result.data["dataset"] == {"train_file": "examples/data/sample_rm_data.jsonl",
                                      "validation_split_percentage": 5}
    assert result.data["training"]["resources_per_worker"] == {"CPU": 32}
    notes = _notes(result)
    assert notes["Dataset.validation_file"][0] == "left out"  # None: TOML has no null
    assert notes["Training.weight_decay"][0] == "no effect"
    assert "relative path" in notes["dataset.train_file"][1]


def test_ppo_conf_maps_quirks_and_hardcoded_values(tmp_path: Path) -> None:
    result = migrate_config(_write(tmp_path, "ppo.conf", PPO_CONF))
    assert result.stage == "ppo"
    data = result.data
    assert data["general"]["model_name"] == "EleutherAI/gpt2" and "model_pretrain" not in data["general"]
    assert (data["training"]["kl_coeff"], data["training"]["experience_batch_size"]) == (0.2, 2)
    assert data["training"]["batch_size"] == 2 and data["training"]["ppo_epochs"] == 1
    assert data["generation"]["max_new_tokens"] == 50 and data["dataset"]["max_length"] == 1024
    assert "epochs" not in data["training"]  # training_iteration is not silently turned into epochs
    notes = _notes(result)
    assert notes["Training.training_iteration"][0] == "no equivalent"
    assert "1000 iterations of 2 prompts (2000 prompts in all)" in notes["Training.training_iteration"][1]
    assert notes["Training.optimizer"][0] == "no effect"
    assert notes["General.output_dir"][0] == "added" and data["general"]["output_dir"] == "runs/ppo"
    assert notes["General.model_pretrain, General.rm_pretrain, Dataset.validation_file"][0] == "left out"


def test_written_toml_has_notes_as_comments_and_loads(tmp_path: Path) -> None:
    result = migrate_config(_write(tmp_path, "ppo.conf", PPO_CONF))
    text = result.to_toml()
    assert text.startswith("# Migrated from ppo.conf")
    assert "#   - Training.training_iteration: no equivalent" in text
    target = _write(tmp_path, "ppo.toml", text)
    (tmp_path / "examples" / "data").mkdir(parents=True)
    (tmp_path / "examples" / "data" / "sample_ppo_data.jsonl").write_text('{"prompt": "hi"}\n')
    config = load_config(target)
    assert config.training.kl_coeff == 0.2
    assert config.dataset.train_file == tmp_path / "examples" / "data" / "sample_ppo_data.jsonl"


def test_finetune_yaml(tmp_path: Path) -> None:
    result = migrate_config(_write(tmp_path, "finetune.yaml", FINETUNE_YAML))
    assert result.stage == "sft"
    assert result.data["training"]["optimizer"] == "AdamW"
    assert result.data["training"]["mixed_precision"] == "bf16"
    assert result.data["general"]["seed"] == 7
    assert result.data["general"]["trust_remote_code"] is False
    assert result.data["dataset"]["max_length"] == 512
    notes = _notes(result)
    for key in ("General.gpt_base_model", "General.save_strategy", "Dataset.group",
                "Training.device", "Training.logging_steps", "General.lora_config.bias"):
        assert notes[key][0] == "no equivalent", key
    assert result.data["lora"] == {"r": 8, "alpha": 32, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    assert notes["General.lora_config.lora_alpha"] == ("changed", "written as lora.alpha")
    assert notes["General.lora_config.task_type"][0] == "no effect"
    assert result.data["training"]["gradient_checkpointing"] is True
    assert notes["General.enable_gradient_checkpointing"] == ("changed", "written as training.gradient_checkpointing")
    assert "\n[lora]\n" in result.to_toml()
    assert notes["Training.optimizer"] == ("changed", "'adamw_torch' written as 'AdamW'")
    assert notes["General.checkpoint_dir"][0] == "added"
    tomllib.loads(result.to_toml())


def test_stage_flag_inference_and_refusals(tmp_path: Path) -> None:
    plain = _write(tmp_path, "old.conf", REWARD_CONF)
    with pytest.raises(UserError, match="cannot tell which stage"):
        migrate_config(plain)
    result = migrate_config(plain, stage="sft")
    assert result.stage == "sft"
    forced = migrate_config(_write(tmp_path, "x.conf", PPO_CONF), stage="rm")
    assert forced.data["general"]["base_model"] == "EleutherAI/gpt2"
    notes = _notes(forced)
    assert notes["General.model_name"] == ("changed", "written as general.base_model")
    assert notes["Training.kl_coeff"] == ("no equivalent", "dropped (a PPO setting, not used by the rm stage)")
    assert "kl_coeff" not in forced.data["training"]


def test_validation_file_wins_over_split(tmp_path: Path) -> None:
    text = REWARD_CONF.replace('"validation_file": None', '"validation_file": "val.jsonl"')
    result = migrate_config(_write(tmp_path, "reward.conf", text))
    assert result.data["dataset"]["validation_file"] == "val.jsonl"
    assert "validation_split_percentage" not in result.data["dataset"]
    assert _notes(result)["Dataset.validation_split_percentage"][0] == "no effect"


def test_bad_values_in_the_original_are_reported_as_config_problems(tmp_path: Path) -> None:
    text = REWARD_CONF.replace('"learning_rate": 1e-5', '"learning_rate": -1')
    with pytest.raises(ConfigError, match="training.learning_rate: must be greater than 0"):
        migrate_config(_write(tmp_path, "reward.conf", text))
