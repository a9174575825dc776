"""Readers: layouts detected from content, line numbers, streaming, and errors naming file and line."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfctl.data import readers
from rlhfctl.data.readers import detect_layout, iter_records
from rlhfctl.errors import DataError

RECORDS = [
    {"prompt": "\n\nHuman: Hi 😀\n\nAssistant:", "chosen": " Héllo", "rejected": " no"},
    {"prompt": "Q2", "chosen": " a", "rejected": " b", "nested": [1, {"x": "y"}]},
    {"prompt": "Q3", "chosen": " c", "rejected": " d"},
]


def read(path) -> list[tuple[int, object]]:
    return [(record.line, record.record) for record in iter_records(path)]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_with_blank_lines_and_line_numbers(tmp_path):
    path = write(tmp_path / "a.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in RECORDS[:2]) + "\n\n"
                 + json.dumps(RECORDS[2]) + "\n")
    assert detect_layout(path) == "jsonl"
    assert read(path) == [(1, RECORDS[0]), (2, RECORDS[1]), (4, RECORDS[2])]


def test_pretty_printed_objects_like_the_seed_rm_sample(tmp_path):
    text = "\n".join(json.dumps(record, indent=4) for record in RECORDS) + "\n"
    path = write(tmp_path / "rm.jsonl", text)  # a .jsonl suffix, but not JSON Lines
    assert detect_layout(path) == "json-objects"
    lines = text.split("\n")
    got = read(path)
    assert [record for _, record in got] == RECORDS
    assert all(lines[line - 1] == "{" for line, _ in got)
    assert got[1][0] == 1 + len(json.dumps(RECORDS[0], indent=4).split("\n"))


def test_concatenated_objects_and_single_object(tmp_path):
    path = write(tmp_path / "c.json", "".join(json.dumps(r) for r in RECORDS))
    assert detect_layout(path) == "json-objects"
    assert [record for _, record in read(path)] == RECORDS
    single = write(tmp_path / "one.json", json.dumps(RECORDS[0], indent=2))
    assert read(single) == [(1, RECORDS[0])]


def test_json_array_of_objects_and_of_strings(tmp_path):
    path = write(tmp_path / "arr.json", json.dumps(RECORDS, indent=2))
    assert detect_layout(path) == "json-array"
    got = read(path)
    assert [record for _, record in got] == RECORDS and got[0][0] == 2
    strings = write(tmp_path / "s.json", '["a", "b"]')
    assert read(strings) == [(1, "a"), (1, "b")]
    assert read(write(tmp_path / "empty.json", "[ ]")) == []


@pytest.mark.parametrize("chunk_chars", [1, 3, 17, 1000])
@pytest.mark.parametrize("style", ["pretty", "concatenated", "array"])
def test_stream_reader_across_chunk_boundaries(tmp_path, monkeypatch, chunk_chars, style):
    monkeypatch.setattr(readers, "_CHUNK_CHARS", chunk_chars)
    rng = random.Random(chunk_chars)
    records = [{"text": "w" * rng.randrange(0, 90), "score": rng.random(), "emoji": "😀é"} for _ in range(40)]
    text = {
        "pretty": "\n".join(json.dumps(r, indent=2, ensure_ascii=False) for r in records),
        "concatenated": "".join(json.dumps(r) for r in records),
        "array": json.dumps(records, indent=1),
    }[style]
    path = write(tmp_path / "s.json", text)
    assert [record for _, record in read(path)] == records


def test_bare_json_strings_per_line(tmp_path):
    path = write(tmp_path / "p.jsonl", '"\\n\\nHuman: one\\n\\nAssistant:"\n"two"\n')
    assert detect_layout(path) == "jsonl"
    assert read(path) == [(1, "\n\nHuman: one\n\nAssistant:"), (2, "two")]


def test_text_file_one_prompt_per_line(tmp_path):
    path = write(tmp_path / "p.txt", "How do I fix my bike?\n\n  Any tips?  \n")
    assert detect_layout(path) == "text"
    assert read(path) == [(1, "How do I fix my bike?"), (3, "  Any tips?  ")]


def test_truncated_last_jsonl_line(tmp_path):
    path = write(tmp_path / "t.jsonl", json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[1])[:25])
    with pytest.raises(DataError) as caught:
        read(path)
    assert caught.value.line == 2 and "cut off" in str(caught.value) and str(path) in str(caught.value)


def test_malformed_line_in_the_middle(tmp_path):
    path = write(tmp_path / "m.jsonl", json.dumps(RECORDS[0]) + "\n{\"prompt\": 'x'}\n" + json.dumps(RECORDS[1]))
    with pytest.raises(DataError) as caught:
        read(path)
    assert caught.value.line == 2 and "malformed JSON" in str(caught.value)
    assert f"{path}:2:" in str(caught.value)


def test_truncated_and_malformed_pretty_objects(tmp_path):
    text = json.dumps(RECORDS[0], indent=2) + "\n" + json.dumps(RECORDS[1], indent=2)
    cut = write(tmp_path / "cut.json", text[:-20])
    with pytest.raises(DataError, match="cut off") as caught:
        read(cut)
    assert caught.value.line == len(json.dumps(RECORDS[0], indent=2).split("\n")) + 1
    bad = write(tmp_path / "bad.json", text.replace('"Q2"', "Q2"))
    with pytest.raises(DataError, match="malformed JSON") as caught:
        read(bad)
    assert caught.value.line == text.split("\n").index('  "prompt": "Q2",') + 1
    array = write(tmp_path / "open.json", json.dumps(RECORDS, indent=2)[:-2])
    with pytest.raises(DataError, match="never closed|cut off"):
        read(array)


def test_non_utf8_bytes_name_line_and_offset(tmp_path):
    path = tmp_path / "latin1.jsonl"
    first = (json.dumps(RECORDS[1]) + "\n").encode()
    path.write_bytes(first + '{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError) as caught:
        read(path)
    message = str(caught.value)
    assert caught.value.line == 2 and "not UTF-8" in message
    offset = len(first) + len(b'{"prompt": "caf')
    assert f"byte offset {offset}" in message


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="empty"):
        detect_layout(write(tmp_path / "e.jsonl", "  \n\n"))
    with pytest.raises(DataError, match="not found"):
        detect_layout(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="save_to_disk"):
        detect_layout(tmp_path)


def test_csv_with_multiline_quoted_fields(tmp_path):
    path = write(tmp_path / "d.csv", 'query,answer\n"line one\nline two, with comma",ok\nsimple,"say ""hi"""\n')
    assert detect_layout(path) == "csv"
    assert read(path) == [
        (2, {"query": "line one\nline two, with comma", "answer": "ok"}),
        (4, {"query": "simple", "answer": 'say "hi"'}),
    ]


def test_csv_too_many_fields_and_tsv(tmp_path):
    bad = write(tmp_path / "bad.csv", "a,b\n1,2\n1,2,3\n")
    with pytest.raises(DataError) as caught:
        read(bad)
    assert caught.value.line == 3
    tsv = write(tmp_path / "d.tsv", "prompt\tnote\nHi, there\tx\n")
    assert detect_layout(tsv) == "tsv"
    assert read(tsv) == [(2, {"prompt": "Hi, there", "note": "x"})]


def test_csv_and_tsv_drop_the_unnamed_index_column_pandas_writes(tmp_path):
    path = write(tmp_path / "d.csv", ',prompt,note\n0,"Hi, there",x\n5,"two\nlines",y\n')
    assert read(path) == [(2, {"prompt": "Hi, there", "note": "x"}), (3, {"prompt": "two\nlines", "note": "y"})]
    tsv = write(tmp_path / "d.tsv", "\tprompt\n0\tHi\n")
    assert read(tsv) == [(2, {"prompt": "Hi"})]
    too_long = write(tmp_path / "long.csv", ",a,b\n0,1,2\n1,1,2,3\n")
    with pytest.raises(DataError, match="row has 4 fields but the header has 3 columns") as caught:
        read(too_long)
    assert caught.value.line == 3


def test_csv_written_by_pandas_reads_as_its_rows(pandas_rm_csv, pandas_rm_rows):
    assert [record for _, record in read(pandas_rm_csv)] == pandas_rm_rows


@pytest.mark.parametrize(("header", "fragment"), [
    ("instruction,,chosen", "no column name at column 2 of 3"),
    (",,instruction,chosen", "no column name at columns 1 and 2 of 4"),  # a two-level pandas index
    (",instruction,,chosen,", "no column name at columns 1, 3 and 5 of 5"),
    ("instruction,chosen,", "no column name at column 3 of 3"),
    (" ", "no column name at column 1 of 1"),
    (",", "no column name at columns 1 and 2 of 2"),
    ("", "the header row is empty"),
    ("a,b,a", "repeats the column name 'a' (columns 1 and 3)"),
    (",a, a", "repeats the column name 'a' (columns 2 and 3)"),
])
def test_csv_header_errors_name_the_file_and_the_column_positions(tmp_path, header, fragment):
    path = write(tmp_path / "h.csv", f"{header}\n1,2,3\n")
    with pytest.raises(DataError) as caught:
        read(path)
    assert fragment in str(caught.value)
    assert caught.value.path == path and caught.value.line == 1 and str(caught.value).startswith(f"{path}:1: ")


def test_gzip_compressed_jsonl(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert detect_layout(path) == "jsonl"
    assert [record for _, record in read(path)] == RECORDS


def test_parquet(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    path = tmp_path / "d.bin"  # detected by content, not suffix
    parquet.write_table(pyarrow.Table.from_pylist([{"prompt": f"P{i}"} for i in range(2500)]), path)
    assert detect_layout(path) == "parquet"
    got = read(path)
    assert len(got) == 2500 and got[0] == (1, {"prompt": "P0"}) and got[-1] == (2500, {"prompt": "P2499"})


def test_datasets_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:1] + RECORDS[2:])}).save_to_disk(str(folder))
    assert detect_layout(folder) == "hf-disk"
    assert [record for _, record in read(folder)] == [RECORDS[0], RECORDS[2]]


def test_hub_id_unreachable_hub_fails_fast_and_clearly(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert detect_layout("someone/not-a-local-dataset") == "hub"
    with pytest.raises(DataError, match="offline") as caught:
        read("someone/not-a-local-dataset")
    assert "local path" in str(caught.value) and "someone/not-a-local-dataset" in str(caught.value)


def test_hub_id_in_offline_mode_goes_through_datasets():
    pytest.importorskip("datasets")
    script = (
        "from rlhfctl.data.readers import iter_records\n"
        "from rlhfctl.errors import DataError\n"
        "try:\n    list(iter_records('someone/not-a-local-dataset'))\n"
        "except DataError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert "could not load hub dataset 'someone/not-a-local-dataset'" in output.stdout
    assert "offline" in output.stdout


def test_streaming_memory_stays_flat(tmp_path):
    """Reading a ~60 MB pretty-printed file keeps peak memory far below the file size."""
    path = tmp_path / "big.json"
    record = json.dumps({"prompt": "p" * 200, "chosen": " c" * 100, "rejected": " r" * 100}, indent=2) + "\n"
    count = 60_000_000 // len(record)
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(count // 1000):
            handle.write(record * 1000)
    script = (
        "import resource, sys\n"
        "from rlhfctl.data.readers import iter_records\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "rows = sum(1 for _ in iter_records(sys.argv[1]))\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(rows, (after - before) // 1024)\n"
    )
    output = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True,
                            env={**os.environ}).stdout.split()
    assert int(output[0]) == (count // 1000) * 1000
    assert int(output[1]) < 25, f"peak memory grew by {output[1]} MB reading a 60 MB file"


def test_jsonl_fast_path_edge_cases(tmp_path):
    path = write(tmp_path / "e.jsonl", '{"a": 1}\n   {"b": 2}  \n\t\n"s"\n')
    assert read(path) == [(1, {"a": 1}), (2, {"b": 2}), (4, "s")]
    extra = write(tmp_path / "x.jsonl", '{"a": 1}\n{"b": 2} trailing\n')
    with pytest.raises(DataError, match="Extra data") as caught:
        read(extra)
    assert caught.value.line == 2


def test_csv_unclosed_quote_names_the_row_where_it_starts(tmp_path):
    path = write(tmp_path / "t.csv", 'a,b\n1,2\n"x,y\nmore\n')
    with pytest.raises(DataError, match="never closed") as caught:
        read(path)
    assert caught.value.line == 3
