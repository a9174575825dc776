"""Smoke tests of the PPO learning check's pure parts: the length-balanced data, the gain, the table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import learn_ppo  # noqa: E402
from benchlib import learning  # noqa: E402


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def sentences(reply: str) -> list[str]:
    return [part for part in reply.strip().split(".") if part.strip()]


def test_learning_data_is_length_balanced_and_holds_out_its_prompts(tmp_path):
    data = learning.write_learning_data(tmp_path)
    pairs = read_jsonl(data.rm_train)
    assert len(pairs) == learning.RM_PAIRS
    for pair in pairs:
        chosen, rejected = sentences(pair["chosen"]), sentences(pair["rejected"])
        assert len(chosen) == len(rejected)  # the reward model cannot prefer the longer reply
    mean_chosen = sum(len(pair["chosen"]) for pair in pairs) / len(pairs)
    mean_rejected = sum(len(pair["rejected"]) for pair in pairs) / len(pairs)
    assert abs(mean_chosen - mean_rejected) < 0.03 * mean_rejected  # sentences of matched lengths
    train = {row["prompt"] for row in read_jsonl(data.ppo_train)}
    heldout = {row["prompt"] for row in read_jsonl(data.heldout)}
    assert len(train) == learning.TRAIN_PROMPTS and len(heldout) == learning.HELDOUT_PROMPTS
    seen = train | {row["instruction"] for row in read_jsonl(data.sft)}
    assert not heldout & seen
    assert learning.write_learning_data(tmp_path) == data  # written once, re-used


def test_sigma_gain_is_in_units_of_the_sft_policys_score_std():
    baseline = learning.PolicyCheck(scores=[0.0, 2.0], kl=[0.0, 0.0], lengths=[3, 3], eos_rate=1.0, samples=[])
    trained = learning.PolicyCheck(scores=[2.0, 4.0], kl=[1.0, 3.0], lengths=[3, 3], eos_rate=1.0, samples=[])
    assert learning.sigma_gain(trained, baseline) == 2.0  # mean 1 -> 3, std 1
    assert trained.kl_mean == 2.0


def test_table_lists_each_run_with_its_overrides():
    record = {"tool": "rlhfctl", "label": "defaults", "seed": 1, "episodes": 2048, "sigma_gain": 0.9512,
              "kl_nats": 1.61, "wall_time_s": 61.4, "eos_rate": 0.37, "length_mean": 25.7,
              "overrides": ["training.max_grad_norm=0"]}
    row = learn_ppo.table([record]).splitlines()[-1]
    assert row == "| rlhfctl | defaults | 1 | 2048 | +0.95 | 1.61 | 61 | 0.37 | 25.7 | training.max_grad_norm=0 |"
