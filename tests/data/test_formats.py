"""Source formats: each converter on hand-made rows, the traps, and detection."""

from __future__ import annotations

import pytest

from rlhfctl.data.formats import FORMATS, ConvertOptions, Skip, detect_format, get_format
from rlhfctl.data.formats.preference import split_hh

OPTIONS = ConvertOptions()


def convert(name: str, target: str, record: object, options: ConvertOptions = OPTIONS) -> list:
    return get_format(name).converters[target](record, options)


def reasons(results: list) -> list[str]:
    return [item.reason for item in results if isinstance(item, Skip)]


# ----------------------------------------------------------------------------------------------- HH-RLHF


def test_hh_splits_at_the_last_assistant_turn():
    prompt = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tea?\n\nAssistant:"
    row = {"chosen": prompt + " Yes, please.", "rejected": prompt + " No."}
    assert convert("hh-rlhf", "rm", row) == [{"instruction": prompt, "chosen": " Yes, please.", "rejected": " No."}]
    assert convert("hh-rlhf", "ppo", row) == [{"prompt": prompt}]
    assert convert("hh-rlhf", "sft", row) == [{"instruction": prompt, "response": " Yes, please."}]


def test_hh_replies_sharing_their_first_words_keep_them():
    prompt = "\n\nHuman: How do I fix my bike?\n\nAssistant:"
    row = {"chosen": prompt + " Sure! Happy to help. Check the chain.", "rejected": prompt + " Sure! No."}
    (result,) = convert("hh-rlhf", "rm", row)
    assert result["instruction"] == prompt  # a character-level common prefix would have eaten " Sure! "
    assert result["chosen"] == " Sure! Happy to help. Check the chain." and result["rejected"] == " Sure! No."


def test_hh_transcripts_that_diverge_before_the_last_turn_are_prompt_mismatch():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tea?\n\nAssistant: Yes."
    rejected = "\n\nHuman: Hi\n\nAssistant: Go away.\n\nHuman: Tea?\n\nAssistant: No."
    for target in ("rm", "ppo", "sft"):  # ppo and sft read the chosen transcript only
        results = convert("hh-rlhf", target, {"chosen": chosen, "rejected": rejected})
        assert reasons(results) == (["prompt-mismatch"] if target == "rm" else [])
    assert split_hh(chosen, rejected) == Skip("prompt-mismatch",
                                              "the transcripts differ before the last assistant turn")
    # the chosen reply hallucinates the next turns: its last assistant marker lies past the point where the
    # rejected transcript ends, so the rejected one does not start with that prompt
    hallucinating_chosen = chosen + "\n\nHuman: Thanks\n\nAssistant: Welcome."
    assert reasons(convert("hh-rlhf", "rm", {"chosen": hallucinating_chosen, "rejected": chosen})) == [
        "prompt-mismatch"]


# The rejected reply goes on with a made-up "Human:" turn and another assistant turn (as in hh-rlhf train rows).
HH_PROMPT = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tea?\n\nAssistant:"
HALLUCINATED = " No.\n\nHuman: Why not?\n\nAssistant: Because."


def test_hh_rejected_reply_with_a_hallucinated_human_turn_follows_the_dpo_convention():
    row = {"chosen": HH_PROMPT + " Yes, please.", "rejected": HH_PROMPT + HALLUCINATED}
    # Rafailov et al.'s reference split: prompt = chosen up to its last "\n\nAssistant:", replies = the rest
    expected = {"instruction": HH_PROMPT, "chosen": " Yes, please.", "rejected": HALLUCINATED}
    assert convert("hh-rlhf", "rm", row) == [expected]
    assert split_hh(row["chosen"], row["rejected"]) == (HH_PROMPT, " Yes, please.", HALLUCINATED)
    assert convert("hh-rlhf", "ppo", row) == [{"prompt": HH_PROMPT}]
    assert convert("hh-rlhf", "sft", row) == [{"instruction": HH_PROMPT, "response": " Yes, please."}]
    assert convert("trl", "rm", row) == [expected]  # TRL's implicit-prompt string pairs split the same way


def test_hh_rejected_that_continues_the_chosen_reply_is_a_pair():
    chosen = HH_PROMPT + " Yes."
    rejected = chosen + "\n\nHuman: ok\n\nAssistant: x"
    assert convert("hh-rlhf", "rm", {"chosen": chosen, "rejected": rejected}) == [
        {"instruction": HH_PROMPT, "chosen": " Yes.", "rejected": " Yes.\n\nHuman: ok\n\nAssistant: x"}]


@pytest.mark.parametrize(("row", "reason"), [
    ({"chosen": "\n\nHuman: Q\n\nAssistant: same", "rejected": "\n\nHuman: Q\n\nAssistant: same"}, "identical-pair"),
    ({"chosen": "\n\nHuman: Q\n\nAssistant: yes", "rejected": "\n\nHuman: Q\n\nAssistant:"}, "empty-response"),
    ({"chosen": "\n\nHuman: Q\n\nAssistant:  ", "rejected": "\n\nHuman: Q\n\nAssistant: no"}, "empty-response"),
    ({"chosen": "just text", "rejected": "other text"}, "no-assistant-turn"),
    ({"chosen": "\n\nHuman: Q\n\nAssistant: a", "rejected": None}, "missing-field"),
    ({"chosen": 5, "rejected": "x"}, "wrong-type"),
])
def test_hh_skips(row, reason):
    assert reasons(convert("hh-rlhf", "rm", row)) == [reason]


# ----------------------------------------------------------------------------------------------- standard / seed


def test_standard_rm_keeps_text_exactly_and_accepts_prompt_alias_and_margin():
    row = {"prompt": "  Q 😀\n", "chosen": " A\t", "rejected": "B ", "response": "dahoas extra column", "margin": 1.5}
    assert convert("standard", "rm", row) == [{"instruction": "  Q 😀\n", "chosen": " A\t", "rejected": "B ",
                                               "margin": 1.5}]
    assert convert("standard", "ppo", row) == [{"prompt": "  Q 😀\n"}]


def test_standard_prompt_as_single_user_message_becomes_text():
    row = {"instruction": [{"role": "user", "content": "Q"}], "chosen": "a", "rejected": "b"}
    assert convert("standard", "rm", row)[0]["instruction"] == "Q"


def test_standard_sft_joins_context():
    row = {"instruction": "When?", "context": "In 2000.", "response": "2000"}
    assert convert("standard", "sft", row) == [{"instruction": "When?\n\nIn 2000.", "response": "2000"}]


# ----------------------------------------------------------------------------------------------- TRL


SYSTEM = {"role": "system", "content": "Be kind."}
USER = {"role": "user", "content": "Hi"}


def test_trl_implicit_conversational():
    row = {"chosen": [USER, {"role": "assistant", "content": "Hello!"}],
           "rejected": [USER, {"role": "assistant", "content": "Go away."}]}
    assert convert("trl", "rm", row) == [{"instruction": "Hi", "chosen": "Hello!", "rejected": "Go away."}]
    assert convert("trl", "ppo", row) == [{"prompt": "Hi"}]


def test_trl_explicit_conversational_with_system_keeps_messages():
    row = {"prompt": [SYSTEM, USER], "chosen": [{"role": "assistant", "content": "Hello!"}],
           "rejected": [{"role": "assistant", "content": "No."}]}
    (result,) = convert("trl", "rm", row)
    assert result == {"instruction": [SYSTEM, USER], "chosen": "Hello!", "rejected": "No."}


def test_trl_prefix_mismatch_and_not_a_pair():
    mismatch = {"chosen": [USER, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "Other"}, {"role": "assistant", "content": "b"}]}
    assert reasons(convert("trl", "rm", mismatch)) == ["prompt-mismatch"]
    not_pair = {"chosen": [USER, {"role": "assistant", "content": "a"}], "rejected": [USER]}
    assert reasons(convert("trl", "rm", not_pair)) == ["not-a-pair"]


def test_trl_string_forms_route_to_standard_and_hh():
    explicit = {"prompt": "Q", "chosen": " a", "rejected": " b"}
    assert convert("trl", "rm", explicit) == [{"instruction": "Q", "chosen": " a", "rejected": " b"}]
    implicit = {"chosen": "\n\nHuman: Q\n\nAssistant: a", "rejected": "\n\nHuman: Q\n\nAssistant: b"}
    assert convert("trl", "rm", implicit)[0]["instruction"] == "\n\nHuman: Q\n\nAssistant:"


# ----------------------------------------------------------------------------------------------- SHP, PKU


def test_shp_labels_and_score_ratio():
    row = {"history": "Post?", "human_ref_A": "A!", "human_ref_B": "B!", "labels": 0, "score_A": 2, "score_B": 10}
    assert convert("shp", "rm", row) == [{"instruction": "Post?", "chosen": "B!", "rejected": "A!"}]
    assert convert("shp", "rm", {**row, "labels": 1})[0]["chosen"] == "A!"
    assert reasons(convert("shp", "rm", row, ConvertOptions(min_score_ratio=6))) == ["low-score-ratio"]
    assert convert("shp", "rm", row, ConvertOptions(min_score_ratio=5))[0]["chosen"] == "B!"
    assert reasons(convert("shp", "rm", {**row, "labels": "1"})) == ["wrong-type"]


def test_pku_better_and_safer():
    row = {"prompt": "Q", "response_0": "r0", "response_1": "r1", "better_response_id": 1, "safer_response_id": 0}
    assert convert("pku-safe-rlhf", "rm", row) == [{"instruction": "Q", "chosen": "r1", "rejected": "r0"}]
    safer = convert("pku-safe-rlhf", "rm", row, ConvertOptions(preference="safer"))
    assert safer == [{"instruction": "Q", "chosen": "r0", "rejected": "r1"}]
    assert reasons(convert("pku-safe-rlhf", "rm", {**row, "response_1": "r0"})) == ["identical-pair"]


# ----------------------------------------------------------------------------------------------- ShareGPT / Orca


def test_sharegpt_preference():
    row = {"conversations": [{"from": "human", "value": "Hi"}],
           "chosen": {"from": "gpt", "value": "Hello"}, "rejected": {"from": "gpt", "value": "Bye"}}
    assert convert("sharegpt-preference", "rm", row) == [{"instruction": "Hi", "chosen": "Hello", "rejected": "Bye"}]
    bad = {**row, "rejected": {"from": "human", "value": "Bye"}}
    assert reasons(convert("sharegpt-preference", "rm", bad)) == ["not-a-pair"]


def test_orca_dpo_with_and_without_system():
    row = {"system": "", "question": "Q", "chosen": "good", "rejected": "bad"}
    assert convert("orca-dpo", "rm", row) == [{"instruction": "Q", "chosen": "good", "rejected": "bad"}]
    with_system = convert("orca-dpo", "rm", {**row, "system": "You are helpful."})
    assert with_system[0]["instruction"] == [{"role": "system", "content": "You are helpful."},
                                             {"role": "user", "content": "Q"}]
    assert convert("orca-dpo", "sft", row) == [{"instruction": "Q", "response": "good"}]


# ----------------------------------------------------------------------------------------------- OpenAssistant


def _message(role, text, rank=None, replies=(), deleted=False):
    return {"role": role, "text": text, "rank": rank, "replies": list(replies), "deleted": deleted}


OASST_TREE = {
    "message_tree_id": "t1",
    "prompt": _message("prompter", "Q1", replies=[
        _message("assistant", "worse", rank=1),
        _message("assistant", "best", rank=0, replies=[
            _message("prompter", "Q2", replies=[
                _message("assistant", "only", rank=0),
                _message("assistant", "gone", rank=1, deleted=True),
            ]),
        ]),
        _message("assistant", "worst", rank=2),
        _message("assistant", "deleted", rank=3, deleted=True),
    ]),
}


def test_oasst_pairs_best_against_each_worse():
    assert convert("oasst", "rm", OASST_TREE) == [
        {"instruction": "Q1", "chosen": "best", "rejected": "worse"},
        {"instruction": "Q1", "chosen": "best", "rejected": "worst"},
    ]


def test_oasst_sft_and_ppo_threads():
    thread = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "best"},
              {"role": "user", "content": "Q2"}]
    assert convert("oasst", "sft", OASST_TREE) == [
        {"instruction": "Q1", "response": "best"}, {"instruction": thread, "response": "only"},
    ]
    assert convert("oasst", "ppo", OASST_TREE) == [{"prompt": "Q1"}, {"prompt": thread}]


def test_oasst_tree_without_ranked_pairs_is_not_a_pair():
    tree = {"message_tree_id": "t", "prompt": _message("prompter", "Q", replies=[_message("assistant", "a", 0)])}
    assert reasons(convert("oasst", "rm", tree)) == ["not-a-pair"]


# ----------------------------------------------------------------------------------------------- SFT sources


def test_alpaca_and_dolly_join_their_extra_field():
    assert convert("alpaca", "sft", {"instruction": "Sum", "input": "1 2", "output": "3"}) == [
        {"instruction": "Sum\n\n1 2", "response": "3"}]
    assert convert("alpaca", "sft", {"instruction": "Hi", "input": "", "output": " Hello"}) == [
        {"instruction": "Hi", "response": " Hello"}]
    assert convert("dolly", "ppo", {"instruction": "When?", "context": "Ctx", "response": "x"}) == [
        {"prompt": "When?\n\nCtx"}]
    assert reasons(convert("alpaca", "sft", {"instruction": "Hi", "input": "", "output": ""})) == ["empty-response"]


def test_sharegpt_and_messages():
    row = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                             {"from": "gpt", "value": "A"}, {"from": "human", "value": "Q2"},
                             {"from": "gpt", "value": "A2"}]}
    (result,) = convert("sharegpt", "sft", row)
    assert [m["role"] for m in result["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert convert("sharegpt", "ppo", row) == [{"prompt": [{"role": "system", "content": "S"},
                                                           {"role": "user", "content": "Q"}]}]
    messages = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    assert convert("messages", "sft", messages) == [messages]
    assert convert("messages", "ppo", messages) == [{"prompt": "Q"}]
    ends_with_user = {"messages": [{"role": "user", "content": "Q"}]}
    assert reasons(convert("messages", "sft", ends_with_user)) == ["no-assistant-turn"]


def test_prompt_only():
    assert convert("prompt-only", "ppo", "Hi") == [{"prompt": "Hi"}]
    assert reasons(convert("prompt-only", "ppo", "  ")) == ["empty-prompt"]


# ----------------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize(("record", "name"), [
    ({"chosen": "\n\nHuman: Q\n\nAssistant: a", "rejected": "\n\nHuman: Q\n\nAssistant: b"}, "hh-rlhf"),
    ({"prompt": "Q", "chosen": "a", "rejected": "b"}, "standard"),
    ({"instruction": "Q", "chosen": "a", "rejected": "b"}, "standard"),
    ({"prompt": "Q"}, "standard"),
    ({"chosen": [USER], "rejected": [USER]}, "trl"),
    ({"history": "h", "human_ref_A": "a", "human_ref_B": "b", "labels": 1}, "shp"),
    ({"prompt": "Q", "response_0": "a", "response_1": "b", "better_response_id": 0}, "pku-safe-rlhf"),
    ({"conversations": [], "chosen": {}, "rejected": {}}, "sharegpt-preference"),
    ({"system": "", "question": "Q", "chosen": "a", "rejected": "b"}, "orca-dpo"),
    (OASST_TREE, "oasst"),
    ({"instruction": "Q", "input": "", "output": "A"}, "alpaca"),
    ({"instruction": "Q", "context": "", "response": "A", "category": "qa"}, "dolly"),
    ({"conversations": [{"from": "human", "value": "Q"}]}, "sharegpt"),
    ({"messages": [USER]}, "messages"),
    ("bare prompt", "prompt-only"),
])
def test_detection(record, name):
    assert detect_format([record, record]).source_format.name == name


def test_detection_majority_and_failure():
    hh = {"chosen": "\n\nHuman: Q\n\nAssistant: a", "rejected": "\n\nHuman: Q\n\nAssistant: b"}
    assert detect_format([hh, hh, {"x": 1}]).source_format.name == "hh-rlhf"
    failed = detect_format([{"query": "q", "answer_A": "a"}, {"history": "h"}])
    assert failed.source_format is None and failed.closest[0][0] == "shp"


def test_every_format_is_documented_and_converts_somewhere():
    names = [source_format.name for source_format in FORMATS]
    assert len(names) == len(set(names))
    for source_format in FORMATS:
        assert source_format.summary and source_format.targets
