"""`convert_file`: streaming conversion, the report, atomic writes, refusals, splits and the seed samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfctl.data.convert import ConvertRequest, convert_file, default_validation_output, parse_field_mappings
from rlhfctl.data.report import write_report
from rlhfctl.errors import DataError, UserError

SEED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "seed-data"
PROMPT = "\n\nHuman: How do I fix my bike?\n\nAssistant:"


def hh(chosen: str, rejected: str, prompt: str = PROMPT) -> dict:
    return {"chosen": prompt + chosen, "rejected": prompt + rejected}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def hh_file(tmp_path) -> Path:
    rows = [
        hh(" Sure! Happy to help 😀.", " No."),
        hh(" Same.", " Same."),  # identical-pair
        hh(" Yes.", "", ),  # empty-response
        {"chosen": "\n\nHuman: A\n\nAssistant: x\n\nHuman: B\n\nAssistant: y",
         "rejected": "\n\nHuman: A\n\nAssistant: z\n\nHuman: B\n\nAssistant: w"},  # prompt-mismatch
        hh(" Sure! Happy to help 😀.", " No."),  # a duplicate of the first
        {"rejected": PROMPT + " x"},  # missing-field
        hh(" Fine, ça va.", " Sure! No."),
    ]
    return write_jsonl(tmp_path / "hh.jsonl", rows)


def test_hh_to_rm_report_and_exact_text(tmp_path, hh_file):
    out = tmp_path / "rm.jsonl"
    report = convert_file(ConvertRequest(str(hh_file), out, "rm"))
    assert report.source_format == "hh-rlhf" and report.format_detected and report.layout == "jsonl"
    assert (report.rows_read, report.rows_written, report.rows_skipped) == (7, 3, 4)
    assert {reason: tally.first_lines for reason, tally in report.skipped.items()} == {
        "identical-pair": [2], "empty-response": [3], "prompt-mismatch": [4], "missing-field": [6]}
    rows = read_jsonl(out)
    assert rows[0] == {"instruction": PROMPT, "chosen": " Sure! Happy to help 😀.", "rejected": " No."}
    assert rows[2]["chosen"] == " Fine, ça va." and rows[2]["rejected"] == " Sure! No."
    assert "😀" in out.read_text(encoding="utf-8")  # written as UTF-8, not \\u escapes
    assert not list(tmp_path.glob(".rm.jsonl.*"))  # no temporary file left behind


def test_report_json(tmp_path, hh_file):
    report = convert_file(ConvertRequest(str(hh_file), tmp_path / "rm.jsonl", "rm"))
    write_report(report, tmp_path / "report.json")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["format"] == "hh-rlhf" and data["rows_read"] == 7 and data["rows_written"] == 3
    assert data["rows_skipped"] == 4 and data["skipped"]["prompt-mismatch"]["first_lines"] == [4]
    assert data["skipped"]["empty-response"]["meaning"]
    assert "skipped prompt-mismatch: 1 (first lines: 4)" in report.to_text()


def test_dedupe(tmp_path, hh_file):
    report = convert_file(ConvertRequest(str(hh_file), tmp_path / "rm.jsonl", "rm", dedupe=True))
    assert report.rows_written == 2 and report.skipped["duplicate"].first_lines == [5]


def test_strict_fails_on_first_skip_and_writes_nothing(tmp_path, hh_file):
    out = tmp_path / "rm.jsonl"
    with pytest.raises(DataError) as caught:
        convert_file(ConvertRequest(str(hh_file), out, "rm", strict=True))
    assert caught.value.line == 2 and "identical-pair" in str(caught.value)
    assert not out.exists() and not list(tmp_path.glob(".rm.jsonl.*"))


def test_refuses_to_clobber_and_output_equal_to_input(tmp_path, hh_file):
    out = tmp_path / "rm.jsonl"
    out.write_text("keep me\n")
    with pytest.raises(UserError, match="already exists"):
        convert_file(ConvertRequest(str(hh_file), out, "rm"))
    assert out.read_text() == "keep me\n"
    convert_file(ConvertRequest(str(hh_file), out, "rm", force=True))
    assert len(read_jsonl(out)) == 3
    before = hh_file.read_bytes()
    with pytest.raises(UserError, match="is the input"):
        convert_file(ConvertRequest(str(hh_file), hh_file, "rm", force=True))
    assert hh_file.read_bytes() == before


def test_failure_midway_keeps_the_previous_output(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(hh(" a", " b")) + "\n{broken\n", encoding="utf-8")
    out = tmp_path / "rm.jsonl"
    out.write_text("previous\n")
    with pytest.raises(DataError, match="malformed JSON") as caught:
        convert_file(ConvertRequest(str(source), out, "rm", force=True))
    assert caught.value.line == 2
    assert out.read_text() == "previous\n" and not list(tmp_path.glob(".rm.jsonl.*"))


def test_validation_split_is_deterministic(tmp_path):
    source = write_jsonl(tmp_path / "p.jsonl", [f"prompt {i}" for i in range(400)])
    first = convert_file(ConvertRequest(str(source), tmp_path / "a.jsonl", "ppo", validation_percentage=25, seed=3))
    second = convert_file(ConvertRequest(str(source), tmp_path / "b.jsonl", "ppo", validation_percentage=25, seed=3))
    assert first.validation_output == str(tmp_path / "a.validation.jsonl")
    assert 60 < first.validation_rows < 140 and first.train_rows + first.validation_rows == 400
    assert (tmp_path / "a.validation.jsonl").read_text() == (tmp_path / "b.validation.jsonl").read_text()
    train = {row["prompt"] for row in read_jsonl(tmp_path / "a.jsonl")}
    held_out = {row["prompt"] for row in read_jsonl(tmp_path / "a.validation.jsonl")}
    assert not train & held_out and len(train | held_out) == 400
    assert default_validation_output(Path("x/rm.jsonl")) == Path("x/rm.validation.jsonl")


def test_max_rows(tmp_path):
    source = write_jsonl(tmp_path / "p.jsonl", [f"prompt {i}" for i in range(50)])
    report = convert_file(ConvertRequest(str(source), tmp_path / "o.jsonl", "ppo", max_rows=7))
    assert report.rows_written == 7 and len(read_jsonl(tmp_path / "o.jsonl")) == 7


def test_field_mapping_for_a_csv(tmp_path):
    source = tmp_path / "q.csv"
    source.write_text('id,query\n1,"How do I\nfix it?"\n2,Why?\n', encoding="utf-8")
    report = convert_file(ConvertRequest(str(source), tmp_path / "o.jsonl", "ppo",
                                         fields=parse_field_mappings(["prompt=query"])))
    assert report.source_format == "standard" and report.layout == "csv"
    assert read_jsonl(tmp_path / "o.jsonl") == [{"prompt": "How do I\nfix it?"}, {"prompt": "Why?"}]
    with pytest.raises(UserError, match="TARGET=SOURCE"):
        parse_field_mappings(["prompt"])


def test_a_csv_written_by_pandas_converts_without_its_index(tmp_path, pandas_rm_csv, pandas_rm_rows):
    out = tmp_path / "rm.jsonl"
    report = convert_file(ConvertRequest(str(pandas_rm_csv), out, "rm"))
    assert report.layout == "csv" and report.source_format == "standard"
    assert (report.rows_read, report.rows_written, report.rows_skipped) == (2, 2, 0)
    assert read_jsonl(out) == pandas_rm_rows


def test_hh_rejected_reply_with_a_hallucinated_turn_converts_and_the_report_counts_it(tmp_path):
    hallucinated = " No.\n\nHuman: Why not?\n\nAssistant: Because."
    rows = [
        hh(" Sure, check the chain.", hallucinated),
        {"chosen": PROMPT + " Sure.", "rejected": "\n\nHuman: Something else\n\nAssistant: No."},  # mismatch
        hh(" Same.", " Same."),  # identical-pair
    ]
    out = tmp_path / "rm.jsonl"
    report = convert_file(ConvertRequest(str(write_jsonl(tmp_path / "hh.jsonl", rows)), out, "rm"))
    assert (report.rows_read, report.rows_written, report.rows_skipped) == (3, 1, 2)
    assert {reason: (tally.count, tally.first_lines) for reason, tally in report.skipped.items()} == {
        "prompt-mismatch": (1, [2]), "identical-pair": (1, [3])}
    assert read_jsonl(out) == [{"instruction": PROMPT, "chosen": " Sure, check the chain.", "rejected": hallucinated}]


def test_undetectable_format_names_closest_and_options(tmp_path):
    source = write_jsonl(tmp_path / "x.jsonl", [{"history": "h", "answer": "a"}])
    with pytest.raises(DataError) as caught:
        convert_file(ConvertRequest(str(source), tmp_path / "o.jsonl", "rm"))
    message = str(caught.value)
    assert "cannot detect" in message and "shp" in message and "--from" in message and "--field" in message


def test_zero_rows_converted_is_an_error(tmp_path):
    source = write_jsonl(tmp_path / "x.jsonl", [hh(" a", " a"), hh(" b", " b")])
    with pytest.raises(DataError, match="no rows converted.*identical-pair: 2"):
        convert_file(ConvertRequest(str(source), tmp_path / "o.jsonl", "rm"))
    assert not (tmp_path / "o.jsonl").exists()


def test_format_that_cannot_make_the_target(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Q", "input": "", "output": "A"}])
    with pytest.raises(DataError, match="'alpaca' cannot produce rm rows"):
        convert_file(ConvertRequest(str(source), tmp_path / "o.jsonl", "rm"))


def test_bad_flags(tmp_path, hh_file):
    with pytest.raises(UserError, match="--to"):
        convert_file(ConvertRequest(str(hh_file), tmp_path / "o.jsonl", "dpo"))
    with pytest.raises(UserError, match="unknown format"):
        convert_file(ConvertRequest(str(hh_file), tmp_path / "o.jsonl", "rm", source_format="nope"))
    with pytest.raises(UserError, match="--val-split"):
        convert_file(ConvertRequest(str(hh_file), tmp_path / "o.jsonl", "rm", validation_percentage=100))


def test_forced_format(tmp_path):
    source = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Q", "chosen": " a", "rejected": " b"}])
    report = convert_file(ConvertRequest(str(source), tmp_path / "o.jsonl", "rm", source_format="trl"))
    assert report.source_format == "trl" and not report.format_detected
    assert read_jsonl(tmp_path / "o.jsonl") == [{"instruction": "Q", "chosen": " a", "rejected": " b"}]


@pytest.mark.skipif(not SEED_DATA.is_dir(), reason="seed data folder absent")
@pytest.mark.parametrize(("name", "target", "source_format", "written"), [
    ("sample_rm_data.jsonl", "rm", "standard", 99),  # one identical pair in the sample
    ("sample_ppo_data.jsonl", "ppo", "standard", 100),
    ("sample_finetune_data.jsonl", "sft", "dolly", 100),
    ("sample_dpo_data.jsonl", "rm", "orca-dpo", 100),
])
def test_seed_samples_convert(tmp_path, name, target, source_format, written):
    from rlhfctl.data.loading import load_rows

    out = tmp_path / f"{target}.jsonl"
    report = convert_file(ConvertRequest(str(SEED_DATA / name), out, target))
    assert report.source_format == source_format and report.rows_read == 100
    assert report.rows_written == written
    assert len(load_rows(out, target)) == written  # the converted file trains


def test_row_encoder_matches_json_dumps():
    import random

    from rlhfctl.data.convert import RowEncoder

    encoder, rng = RowEncoder(), random.Random(0)
    alphabet = [chr(code) for code in range(0, 200)] + ["😀", "\u2028", '"', "\\", "é", "\x7f"]
    for _ in range(2000):
        row = {"".join(rng.choices(alphabet, k=rng.randrange(4))): "".join(rng.choices(alphabet, k=rng.randrange(20)))
               for _ in range(rng.randrange(4))}
        if rng.random() < 0.2:
            row["instruction"] = [{"role": "user", "content": "x"}]
        assert encoder.encode(row) == json.dumps(row, ensure_ascii=False) + "\n"


def test_lone_surrogate_escapes_survive_as_escapes(tmp_path):
    source = tmp_path / "p.jsonl"
    source.write_text('"broken \\ud83d emoji"\n"fine 😀"\n', encoding="utf-8")
    out = tmp_path / "o.jsonl"
    convert_file(ConvertRequest(str(source), out, "ppo"))
    assert out.read_text(encoding="utf-8").splitlines() == ['{"prompt": "broken \\ud83d emoji"}',
                                                            '{"prompt": "fine 😀"}']
