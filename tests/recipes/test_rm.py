"""RM recipe on the single-process path: learning, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhfctl.config import load_config
from rlhfctl.recipes import rm
from rlhfctl.runfiles import REWARD_STATS_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]
RM_DATA = REPO_ROOT / "examples" / "data" / "rm.jsonl"


def write_rm_config(tmp_path: Path, model_dir: Path, *, workers: int = 1, extra: str = "") -> Path:
    """A small, learnable RM config on the example data (shared with the Ray and CLI tests)."""
    path = tmp_path / "rm.toml"
    path.write_text(f"""
stage = "rm"
[general]
base_model = "{model_dir}"
output_dir = "{tmp_path / 'run'}"
checkpoint_dir = "{tmp_path / 'model'}"
seed = 0
[dataset]
train_file = "{RM_DATA}"
validation_split_percentage = 10
max_length = 64
[training]
batch_size = 16
epochs = 2
learning_rate = 1e-3
num_training_workers = {workers}
resources_per_worker = {{ CPU = 1 }}
save_every_steps = 10
{extra}
""", encoding="utf-8")
    return path


def test_local_training_learns_and_exports_a_plain_hf_model(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = load_config(write_rm_config(tmp_path, tiny_model_dir))
    job = rm.build_job(config)
    assert (job.train_rows, job.validation_rows, job.steps_per_epoch, job.total_steps) == (450, 50, 29, 58)
    summary = rm.run(config)
    assert summary.steps == 58
    assert summary.final_metrics["validation_accuracy"] >= 0.9
    assert summary.final_metrics["validation_loss"] < 0.3

    export = tmp_path / "model"
    stats = json.loads((export / REWARD_STATS_FILE).read_text())
    assert stats["source"] == "validation" and stats["count"] == 100 and stats["std"] > 0
    assert stats["mean"] == pytest.approx(summary.final_metrics["validation_reward_mean"])
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    row = json.loads(RM_DATA.read_text().splitlines()[0])
    texts = [row["instruction"] + row["chosen"] + tokenizer.eos_token, row["instruction"] + row["rejected"] + tokenizer.eos_token]
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        chosen, rejected = model(**encoded).logits[:, 0].tolist()
    assert chosen > rejected
