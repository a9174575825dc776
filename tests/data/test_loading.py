"""Training-side loading: normalised rows, the seed's variants, errors naming file/line/key, the split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfctl.config.schema import DatasetConfig
from rlhfctl.data.loading import load_rows, load_training_data, split_rows
from rlhfctl.errors import DataError

SEED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "seed-data"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_rm_accepts_instruction_or_prompt_and_optional_margin(tmp_path):
    path = write_jsonl(tmp_path / "rm.jsonl", [
        {"instruction": "Q1", "chosen": " good", "rejected": " bad"},
        {"prompt": "Q2", "chosen": " good", "rejected": " bad", "margin": 2},
        {"prompt": [{"role": "system", "content": "S"}, {"from": "human", "value": "Q3"}],
         "chosen": "a", "rejected": "b"},
    ])
    rows = load_rows(path, "rm")
    assert rows[0] == {"prompt": "Q1", "chosen": " good", "rejected": " bad", "margin": None}
    assert rows[1]["prompt"] == "Q2" and rows[1]["margin"] == 2.0
    assert rows[2]["prompt"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q3"}]


def test_rm_pretty_printed_objects_load(tmp_path):
    path = tmp_path / "rm.jsonl"
    path.write_text(
        "\n".join(json.dumps({"prompt": f"Q{i}", "chosen": " a", "rejected": " b"}, indent=4) for i in range(3)),
        encoding="utf-8",
    )
    assert [row["prompt"] for row in load_rows(path, "rm")] == ["Q0", "Q1", "Q2"]


@pytest.mark.parametrize(
    ("row", "key", "fragment"),
    [
        ({"instruction": "Q", "chosen": "a"}, "rejected", "missing"),
        ({"chosen": "a", "rejected": "b"}, "instruction", "missing"),
        ({"instruction": "Q", "chosen": 3, "rejected": "b"}, "chosen", "expected text"),
        ({"instruction": "Q", "chosen": "a", "rejected": "  "}, "rejected", "empty"),
        ({"instruction": "Q", "chosen": "a", "rejected": "b", "margin": "big"}, "margin", "finite number"),
        ({"instruction": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}, "instruction", "role"),
    ],
)
def test_rm_errors_name_file_line_and_key(tmp_path, row, key, fragment):
    good = {"instruction": "Q", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "rm.jsonl", [good, good, row])
    with pytest.raises(DataError) as caught:
        load_rows(path, "rm")
    error = caught.value
    assert (error.path, error.line, error.key) == (path, 3, key)
    assert f"{path}:3:" in str(error) and f"'{key}'" in str(error) and fragment in str(error)


def test_ppo_prompt_extra_keys_ignored_and_bare_strings(tmp_path):
    path = write_jsonl(tmp_path / "ppo.jsonl", [{"prompt": "P1", "chosen": "x", "rejected": "y"}, "P2",
                                                {"instruction": "P3"}])
    assert load_rows(path, "ppo") == [{"prompt": "P1"}, {"prompt": "P2"}, {"prompt": "P3"}]


def test_sft_instruction_response_context_and_messages(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"instruction": "When?", "context": "In 2000.", "response": "2000", "category": "qa"},
        {"instruction": "Hi", "response": " Hello", "context": ""},
        {"messages": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}]},
    ])
    rows = load_rows(path, "sft")
    assert rows[0] == {"messages": [{"role": "user", "content": "When?\n\nIn 2000."},
                                    {"role": "assistant", "content": "2000"}]}
    assert rows[1]["messages"][0]["content"] == "Hi"
    assert rows[2]["messages"][1] == {"role": "assistant", "content": "B"}


def test_sft_messages_must_end_with_assistant(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": "A"}]}])
    with pytest.raises(DataError, match="last message"):
        load_rows(path, "sft")


def test_empty_file_and_missing_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        load_rows(empty, "rm")
    with pytest.raises(DataError, match="not found"):
        load_rows(tmp_path / "nope.jsonl", "rm")


def test_split_is_deterministic_and_keeps_order():
    rows = [{"i": i} for i in range(100)]
    train, validation = split_rows(rows, 10, seed=3)
    assert len(train) == 90 and len(validation) == 10
    assert split_rows(rows, 10, seed=3) == (train, validation)
    assert split_rows(rows, 10, seed=4)[1] != validation
    assert [row["i"] for row in train] == sorted(row["i"] for row in train)
    assert {row["i"] for row in train}.isdisjoint(row["i"] for row in validation)


def test_split_edge_cases():
    rows = [{"i": i} for i in range(5)]
    assert split_rows(rows, 0, seed=0) == (rows, [])
    train, validation = split_rows(rows, 5, seed=0)  # 0.25 rows rounds to 0, but a positive percent holds one out
    assert len(validation) == 1 and len(train) == 4
    assert split_rows(rows[:1], 50, seed=0) == (rows[:1], [])


def test_load_training_data_with_split_and_validation_file(tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"P{i}"} for i in range(20)])
    data = load_training_data(DatasetConfig(train_file=train_file, validation_split_percentage=25), "ppo", seed=7)
    assert len(data.train) == 15 and len(data.validation) == 5
    assert data.train_file == train_file and "25% of" in data.validation_source
    none = load_training_data(DatasetConfig(train_file=train_file, validation_split_percentage=0), "ppo", seed=7)
    assert len(none.train) == 20 and none.validation == [] and none.validation_source == "none"
    val_file = write_jsonl(tmp_path / "val.jsonl", ["V1", "V2"])
    with_file = load_training_data(DatasetConfig(train_file=train_file, validation_file=val_file), "ppo", seed=7)
    assert len(with_file.train) == 20 and with_file.validation == [{"prompt": "V1"}, {"prompt": "V2"}]
    assert with_file.validation_source == str(val_file)


def test_rm_training_data_from_a_csv_written_by_pandas(pandas_rm_csv, pandas_rm_rows):
    expected = [{"prompt": row["instruction"], "chosen": row["chosen"], "rejected": row["rejected"], "margin": None}
                for row in pandas_rm_rows]
    assert load_rows(pandas_rm_csv, "rm") == expected
    data = load_training_data(DatasetConfig(train_file=pandas_rm_csv, validation_split_percentage=0), "rm", seed=0)
    assert data.train == expected and data.validation == []


@pytest.mark.skipif(not SEED_DATA.is_dir(), reason="seed data folder absent")
@pytest.mark.parametrize(("name", "kind"), [
    ("sample_rm_data.jsonl", "rm"), ("sample_ppo_data.jsonl", "ppo"), ("sample_finetune_data.jsonl", "sft"),
])
def test_seed_samples_load_directly(name, kind):
    rows = load_rows(SEED_DATA / name, kind)
    assert len(rows) == 100


def test_extra_keys_are_kept_and_required(tmp_path):
    """A stage can ask for more keys per row (GRPO's exact_match reads "answer"); a row without one is refused."""
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "2 + 2?", "answer": 4, "other": 1},
                                                     {"prompt": "Capital of France?", "answer": "Paris"}])
    rows = load_rows(path, "ppo", {"answer": "the exact_match reward"})
    assert rows == [{"prompt": "2 + 2?", "answer": 4}, {"prompt": "Capital of France?", "answer": "Paris"}]
    for bad, fragment in (({"prompt": "x"}, "missing (the exact_match reward reads it)"),
                          ({"prompt": "x", "answer": [1]}, "expected text or a number, found list"),
                          ({"prompt": "x", "answer": True}, "expected text or a number, found bool"),
                          ("a bare prompt", "missing")):
        write_jsonl(path, [{"prompt": "fine", "answer": "1"}, bad])
        with pytest.raises(DataError, match=fragment.replace("(", r"\(").replace(")", r"\)")) as caught:
            load_rows(path, "ppo", {"answer": "the exact_match reward"})
        assert caught.value.line == 2 and caught.value.key == "answer"
