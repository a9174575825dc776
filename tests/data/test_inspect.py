"""`inspect_file`: counts, lengths, duplicates, identical pairs, empty fields, token lengths."""

from __future__ import annotations

import json

import pytest

from rlhfctl.data.inspect import inspect_file
from rlhfctl.errors import DataError


class WordTokenizer:
    """One token per whitespace-separated word."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


@pytest.fixture
def rm_file(tmp_path):
    rows = [
        {"prompt": "one two", "chosen": "a b c", "rejected": "d"},
        {"prompt": "one two", "chosen": "a b c", "rejected": "d"},  # duplicate
        {"prompt": "three", "chosen": "same", "rejected": "same"},  # identical pair
        {"prompt": "four five six seven", "chosen": "x y z w v", "rejected": " "},  # empty rejected
    ]
    path = tmp_path / "rm.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_counts_and_char_lengths(rm_file):
    report = inspect_file(rm_file, example_count=2)
    assert report.layout == "jsonl" and report.source_format == "standard" and report.rows == 4
    assert report.duplicate_rows == 1 and report.identical_pairs == 1
    assert report.empty_fields == {"rejected": 1}
    assert report.char_lengths["prompt"].max == len("four five six seven")
    assert report.char_lengths["chosen"].mean == pytest.approx((5 + 5 + 4 + 9) / 4)
    assert [line for line, _ in report.examples] == [1, 2]
    assert report.token_lengths == {} and report.rows_over_max_length is None


def test_token_lengths_and_rows_over_max_length(rm_file):
    report = inspect_file(rm_file, tokenizer=WordTokenizer(), max_length=5)
    assert report.token_lengths["chosen"].max == 5
    # longest sequences: 2+3=5, 5, 1+1=2, 4+5=9 -> one row exceeds 5 tokens
    assert report.rows_over_max_length == 1
    assert json.dumps(report.to_dict())


def test_bare_strings_and_empty_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('"hello there"\n"hi"\n')
    report = inspect_file(path)
    assert report.source_format == "prompt-only" and report.char_lengths["(text)"].max == 11
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        inspect_file(empty)


def test_a_csv_written_by_pandas_shows_its_columns_without_the_index(pandas_rm_csv, pandas_rm_rows):
    report = inspect_file(pandas_rm_csv)
    assert report.layout == "csv" and report.source_format == "standard" and report.rows == 2
    assert set(report.char_lengths) == {"instruction", "chosen", "rejected"}
    assert [record for _, record in report.examples] == pandas_rm_rows
    assert [line for line, _ in report.examples] == [2, 7]  # each row starts where its quoted prompt opens
