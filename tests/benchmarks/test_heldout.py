"""The neutral judge's DPO accuracy (benchmarks/benchlib/heldout.py ``dpo``) against hand-computed log-probs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

from benchlib import heldout  # noqa: E402

PAIRS = [
    {"instruction": "How do I clean my bike?", "chosen": " Use a soft cloth.", "rejected": " No."},
    {"instruction": "Tell me about tomato plants, please.", "chosen": " Water them every day and keep them warm.",
     "rejected": " Figure it out yourself, I do not care."},
    {"instruction": "Why?", "chosen": " Because.", "rejected": " Great question, I am happy to help you."},
]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PAIRS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def perturbed_policy(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with every weight moved a little (seeded): a policy whose rewards are not zero."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    out = tmp_path_factory.mktemp("policy")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def summed_reply_logprob(model_dir: Path, tokenizer, prompt: str, reply: str) -> float:
    """One unpadded sequence: log p(reply tokens + EOS | prompt), summed, written out token by token."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt_ids = tokenizer(prompt)["input_ids"]
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = prompt_ids + reply_ids
    with torch.no_grad():
        logprobs = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    return sum(float(logprobs[position - 1, ids[position]]) for position in range(len(prompt_ids), len(ids)))


def flat(pairs: list[tuple[float, float]]) -> list[float]:
    return [value for pair in pairs for value in pair]


def test_the_policy_against_itself_has_zero_rewards_and_no_accuracy(tiny_model_dir, pairs_file):
    result = heldout.dpo_accuracy(str(tiny_model_dir), str(tiny_model_dir), str(pairs_file), beta=0.1)
    assert result == {"accuracy": 0.0, "margin": 0.0, "pairs": 3}  # 0 > 0 is not a win, as in both tools


def test_rewards_are_beta_times_summed_reply_logprob_ratios(tiny_model_dir, perturbed_policy, pairs_file):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rewards = heldout.dpo_pair_rewards(str(perturbed_policy), str(tiny_model_dir), str(pairs_file), beta=0.5,
                                       batch_size=4)  # a batch mixes pairs of different lengths: padding matters
    expected = []
    for row in PAIRS:
        expected.append(tuple(
            0.5 * (summed_reply_logprob(perturbed_policy, tokenizer, row["instruction"], row[key])
                   - summed_reply_logprob(tiny_model_dir, tokenizer, row["instruction"], row[key]))
            for key in ("chosen", "rejected")))
    assert flat(rewards) == pytest.approx(flat(expected), abs=1e-4)
    assert any(abs(value) > 1e-2 for value in flat(rewards))  # the perturbation moved them
    result = heldout.dpo_accuracy(str(perturbed_policy), str(tiny_model_dir), str(pairs_file), beta=0.5,
                                  with_rewards=True)
    assert flat(result["rewards"]) == pytest.approx(flat(expected), abs=1e-4)
    assert result["accuracy"] == sum(c > r for c, r in expected) / 3
    assert result["margin"] == pytest.approx(sum(c - r for c, r in expected) / 3, abs=1e-4)


def test_rewards_match_rlhfctls_own_pair_logprobs(tiny_model_dir, perturbed_policy, pairs_file):
    """The judge reads the same tokens as ``rlhfctl dpo train`` (reply + EOS after the prompt, packed or not)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfctl.models.pair_logprobs import all_pair_logprobs, make_logprob_model
    from rlhfctl.models.preference import tokenize_pairs

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": row["instruction"], "chosen": row["chosen"], "rejected": row["rejected"]} for row in PAIRS]
    pairs = tokenize_pairs(rows, tokenizer, max_length=128)

    def summed(model_dir):
        model = make_logprob_model(AutoModelForCausalLM.from_pretrained(model_dir))
        return all_pair_logprobs(model, pairs, tokenizer.pad_token_id, 2, "cpu")

    policy, reference = summed(perturbed_policy), summed(tiny_model_dir)
    rlhfctl_rewards = list(zip((0.1 * (policy.chosen - reference.chosen)).tolist(),
                               (0.1 * (policy.rejected - reference.rejected)).tolist()))
    judged = heldout.dpo_pair_rewards(str(perturbed_policy), str(tiny_model_dir), str(pairs_file), beta=0.1)
    assert flat(judged) == pytest.approx(flat(rlhfctl_rewards), abs=1e-4)
