"""The DPO learning section's data: held-out pairs in new wording, nested training subsets per seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

from benchlib import learning  # noqa: E402
from benchlib.sections import dpo_learning  # noqa: E402


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def sentences(reply: str) -> list[str]:
    return [part.strip() + "." for part in reply.strip().split(".") if part.strip()]


def helpful_count(reply: str, verb: str, thing: str) -> int:
    helpful = {template.format(verb=verb, thing=thing) for template in dpo_learning.NOVEL_HELPFUL}
    return sum(sentence in helpful for sentence in sentences(reply))


def test_novel_pairs_prefer_more_helpful_replies_in_wording_no_training_pair_uses(tmp_path):
    data = learning.write_learning_data(tmp_path / "data")
    path = dpo_learning.novel_sentence_pairs(tmp_path / "novel.jsonl")
    pairs = read_jsonl(path)
    assert len(pairs) == dpo_learning.HELDOUT_PAIRS
    training_sentences = {sentence for row in read_jsonl(data.rm_train) for key in ("chosen", "rejected")
                          for sentence in sentences(row[key])}
    for pair in pairs:
        question = pair["instruction"]
        verb, thing = next((v, t) for v in learning.VERBS for t in learning.THINGS
                           if f" {v} my {t}" in question)
        chosen, rejected = sentences(pair["chosen"]), sentences(pair["rejected"])
        assert len(chosen) == len(rejected)  # same sentence count: length does not give the pair away
        assert helpful_count(pair["chosen"], verb, thing) > helpful_count(pair["rejected"], verb, thing)
        assert not (set(chosen) | set(rejected)) & training_sentences
    assert dpo_learning.novel_sentence_pairs(tmp_path / "novel.jsonl") == path  # written once, re-used
    assert read_jsonl(dpo_learning.novel_sentence_pairs(tmp_path / "again.jsonl")) == pairs  # deterministic


def test_a_seeds_shorter_runs_train_on_a_prefix_of_its_longer_runs_pairs(tmp_path):
    all_pairs = tmp_path / "all.jsonl"
    all_pairs.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(100)), encoding="utf-8")
    short = read_jsonl(dpo_learning.training_pairs(all_pairs, tmp_path, seed=1, steps=2))
    long = read_jsonl(dpo_learning.training_pairs(all_pairs, tmp_path, seed=1, steps=8))
    other_seed = read_jsonl(dpo_learning.training_pairs(all_pairs, tmp_path, seed=2, steps=8))
    assert len(short) == 2 * dpo_learning.GLOBAL_BATCH and len(long) == 8 * dpo_learning.GLOBAL_BATCH
    assert long[:len(short)] == short
    assert other_seed != long and sorted(row["id"] for row in other_seed) != list(range(64))  # shuffled, per seed


def test_a_row_takes_the_median_over_seeds_and_lists_every_seed():
    verdict = {"novel sentences": {"accuracy": 0.5, "margin": 0.1}}
    judged = {"rlhfctl": {8: [verdict, {"novel sentences": {"accuracy": 0.75}}, {"novel sentences": None}]},
              "trl": {8: [{"novel sentences": {"accuracy": 0.25}}]}}
    row = dpo_learning._accuracy_row(judged, 8, "novel sentences", "accuracy")
    assert (row.rlhfctl, row.trl) == (0.625, 0.25)
    assert "rlhfctl 0.500, 0.750, n/a; TRL 0.250" in row.note
    assert row.samples == {"rlhfctl": [0.5, 0.75], "trl": [0.25]}


def test_the_largest_reward_difference_compares_the_tools_reply_by_reply():
    mine = {"rewards": [[0.5, 0.25], [0.0, -1.0]]}
    theirs = {"rewards": [[0.5, 0.5], [0.125, -1.0]]}
    assert dpo_learning.largest_reward_difference(mine, theirs) == 0.25
    assert dpo_learning.largest_reward_difference(mine, None) is None  # a failed run has no verdict
