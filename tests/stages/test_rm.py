"""RM stage on the single-process path: tokenization, scoring position, learning, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhfctl.config import load_config
from rlhfctl.stages import rm
from rlhfctl.stages._modeling import load_reward_model, load_tokenizer, make_scorer

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


def test_truncation_keeps_the_response_end_and_eos(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    row = {"prompt": "\n\nHuman: " + "please tell me a very long story " * 20 + "\n\nAssistant:",
           "chosen": " Sure! Happy to help.", "rejected": " No.", "margin": None}
    (pair,) = rm.tokenize_pairs([row], tokenizer, max_length=16)
    chosen_response = tokenizer(" Sure! Happy to help.", add_special_tokens=False)["input_ids"]
    assert len(pair.chosen_ids) == 16 and len(pair.rejected_ids) == 16
    assert pair.chosen_ids[-1] == tokenizer.eos_token_id
    assert pair.chosen_ids[-1 - len(chosen_response):-1] == chosen_response
    prompt_ids = tokenizer(row["prompt"])["input_ids"]
    assert pair.chosen_ids[:16 - len(chosen_response) - 1] == prompt_ids[-(16 - len(chosen_response) - 1):]
    assert pair.margin == 0.0


def test_score_is_read_at_the_last_real_token_with_right_or_left_padding(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_reward_model(tiny_model_dir, tokenizer).eval()
    scorer = make_scorer(model)
    sequences = [[5, 6, 7, 8, 9, tokenizer.eos_token_id], [10, 11, tokenizer.eos_token_id]]
    pad = tokenizer.pad_token_id
    right = torch.tensor([sequences[0], sequences[1] + [pad] * 3])
    right_mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    left = torch.tensor([sequences[0], [pad] * 3 + sequences[1]])
    left_mask = torch.tensor([[1] * 6, [0] * 3 + [1] * 3])
    with torch.no_grad():
        right_scores = scorer(right, right_mask)
        left_scores = scorer(left, left_mask)
        alone = [scorer(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item() for ids in sequences]
        hf_pooled = model(input_ids=right, attention_mask=right_mask).logits[:, 0]  # pad != eos here
    assert right_scores.tolist() == pytest.approx(alone, abs=1e-5)
    assert left_scores.tolist() == pytest.approx(alone, abs=1e-5)
    assert right_scores.tolist() == pytest.approx(hf_pooled.tolist(), abs=1e-5)


def test_chosen_and_rejected_share_one_forward(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    pairs = [rm.TokenizedPair([1, 2, 3], [4, 5], 0.0), rm.TokenizedPair([6], [7, 8, 9, 10], 1.5)]
    batch = rm.collate_pairs(pairs, tokenizer.pad_token_id, "cpu")
    assert batch["input_ids"].shape == (4, 4)  # (2 x pairs, longest)
    assert batch["attention_mask"].sum(-1).tolist() == [3, 1, 2, 4]
    assert batch["margin"].tolist() == [0.0, 1.5]
    calls = []

    def scorer(input_ids, attention_mask):
        calls.append(input_ids.shape)
        return attention_mask.sum(-1).float()

    chosen, rejected = rm.score_pairs(scorer, batch)
    assert calls == [(4, 4)] and chosen.tolist() == [3.0, 1.0] and rejected.tolist() == [2.0, 4.0]


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
    stats = json.loads((export / rm.REWARD_STATS_FILE).read_text())
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
