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


# ----------------------------------------------------------------------------------------------- length bias


def preference_rows(*, biased: bool, count: int = 200, seed: int = 0) -> list[dict]:
    """Pairs whose only signal is length (``biased``: the chosen reply is always the longer one) or a quality marker
    with lengths drawn independently for both replies (a reward model can only learn the marker)."""
    import random

    rng = random.Random(seed)
    words = "the plants car cloth patience friend weekend water light soil help care slowly day".split()
    rows = []
    for index in range(count):
        prompt = f"\n\nHuman: Any tips for my {rng.choice(words)}?\n\nAssistant:"
        if biased:
            chosen = " ".join(rng.choices(words, k=rng.randint(14, 22)))
            rejected = " ".join(rng.choices(words, k=rng.randint(2, 6)))
        else:
            chosen = "Sure! " + " ".join(rng.choices(words, k=rng.randint(2, 18)))
            rejected = "No. " + " ".join(rng.choices(words, k=rng.randint(2, 18)))
        rows.append({"instruction": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
    return rows


@pytest.mark.parametrize("biased", [True, False], ids=["length-biased", "balanced"])
def test_the_length_bias_alarm_fires_on_a_length_biased_preference_set_only(tmp_path, tiny_model_dir, biased):
    from rlhfctl.progress.events import HealthAlarm, RecordingSink

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in preference_rows(biased=biased)), encoding="utf-8")
    config = load_config(write_rm_config(tmp_path, tiny_model_dir, extra='[monitor]\nlength_bias_max = 0.5\n'),
                         overrides=[f"dataset.train_file={data}", "dataset.validation_split_percentage=20",
                                    "general.report_to=[]"])
    sink = RecordingSink()
    summary = rm.run(config, progress=sink)  # the alarm warns (the default action): the run goes on to its end
    final = summary.final_metrics
    alarms = [event.alarm for event in sink.events if isinstance(event, HealthAlarm)]
    recorded = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()
                if json.loads(line)["kind"] == "health"]
    if biased:
        assert final["validation_longer_wins_accuracy"] == 1.0 and final["validation_accuracy"] >= 0.9
        assert final["validation_length_bias_spearman"] >= 0.5
        assert [(alarm.check, alarm.split, alarm.action) for alarm in alarms] == [
            ("rm_length_bias", "validation", "warn")]
        assert "favours longer responses" in alarms[0].message and '"longer wins" alone is 100% accurate' in \
            alarms[0].message
        assert [(event["check"], event["step"]) for event in recorded] == [("rm_length_bias", alarms[0].step)]
    else:
        assert 0.3 <= final["validation_longer_wins_accuracy"] <= 0.7 and final["validation_accuracy"] >= 0.9
        assert abs(final["validation_length_bias_spearman"]) < 0.5
        assert alarms == [] and recorded == []
