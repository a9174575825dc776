"""Preference pairs: tokenised with the prompt cut from the left, chosen and rejected scored in one forward."""

from __future__ import annotations

import pytest

from rlhfctl.models import preference
from rlhfctl.models.loading import load_tokenizer


def test_truncation_keeps_the_response_end_and_eos(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    row = {"prompt": "\n\nHuman: " + "please tell me a very long story " * 20 + "\n\nAssistant:",
           "chosen": " Sure! Happy to help.", "rejected": " No.", "margin": None}
    (pair,) = preference.tokenize_pairs([row], tokenizer, max_length=16)
    chosen_response = tokenizer(" Sure! Happy to help.", add_special_tokens=False)["input_ids"]
    assert len(pair.chosen_ids) == 16 and len(pair.rejected_ids) == 16
    assert pair.chosen_ids[-1] == tokenizer.eos_token_id
    assert pair.chosen_ids[-1 - len(chosen_response):-1] == chosen_response
    prompt_ids = tokenizer(row["prompt"])["input_ids"]
    assert pair.chosen_ids[:16 - len(chosen_response) - 1] == prompt_ids[-(16 - len(chosen_response) - 1):]
    assert pair.margin == 0.0
    # what is left of the prompt in each sequence (DPO scores the tokens after it)
    rejected_response = tokenizer(" No.", add_special_tokens=False)["input_ids"]
    assert pair.chosen_prompt_length == 16 - len(chosen_response) - 1
    assert pair.rejected_prompt_length == 16 - len(rejected_response) - 1
    (whole,) = preference.tokenize_pairs([row], tokenizer, max_length=1024)
    assert whole.chosen_prompt_length == whole.rejected_prompt_length == len(prompt_ids)
    (cut,) = preference.tokenize_pairs([row], tokenizer, max_length=3)  # the response alone is too long
    assert cut.chosen_prompt_length == 0 and len(cut.chosen_ids) == 3


def test_chosen_and_rejected_share_one_forward(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    pairs = [preference.TokenizedPair([1, 2, 3], [4, 5], 0.0), preference.TokenizedPair([6], [7, 8, 9, 10], 1.5)]
    batch = preference.collate_pairs(pairs, tokenizer.pad_token_id, "cpu")
    assert batch["input_ids"].shape == (4, 4)  # (2 x pairs, longest)
    assert batch["attention_mask"].sum(-1).tolist() == [3, 1, 2, 4]
    assert batch["margin"].tolist() == [0.0, 1.5]
    calls = []

    def scorer(input_ids, attention_mask):
        calls.append(input_ids.shape)
        return attention_mask.sum(-1).float()

    chosen, rejected = preference.score_pairs(scorer, batch)
    assert calls == [(4, 4)] and chosen.tolist() == [3.0, 1.0] and rejected.tolist() == [2.0, 4.0]


def test_response_lengths_count_the_scored_reply_tokens(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = [{"prompt": "Hi", "chosen": " Sure, happy to help.", "rejected": " No."},
            {"prompt": "Hi", "chosen": " word " * 40, "rejected": ""}]
    lengths = preference.response_lengths(rows, tokenizer, max_length=24)
    chosen_ids = tokenizer(" Sure, happy to help.", add_special_tokens=False)["input_ids"]
    assert lengths[0] == (len(chosen_ids) + 1, len(tokenizer(" No.", add_special_tokens=False)["input_ids"]) + 1)
    assert lengths[1] == (24, 1)  # cut to max_length as the scored sequence is; an empty reply is its EOS


def test_length_bias_metrics_by_hand():
    rewards = [(3.0, 0.0), (2.0, 1.0)]  # reward ranks 4, 1 | 3, 2 against length ranks 4, 1 | 2, 3
    lengths = [(40, 10), (20, 30)]
    # Spearman = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * (0 + 0 + 1 + 1) / 60 = 0.8; "longer wins" 1 of 2 pairs
    assert preference.length_bias_metrics(rewards, lengths) == {"length_bias_spearman": pytest.approx(0.8),
                                                                "longer_wins_accuracy": 0.5}
    equal = preference.length_bias_metrics([(1.0, 0.0), (0.5, 0.2)], [(5, 5), (5, 5)])
    assert equal == {"longer_wins_accuracy": 0.5}  # no length variation: the correlation is undefined, left out
