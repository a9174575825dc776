"""`rlhfctl data convert | formats | inspect` through the CLI: exit codes, messages, files written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from rlhfctl.cli.app import app

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
PROMPT = "\n\nHuman: Hi\n\nAssistant:"


def write_hh(path: Path) -> Path:
    rows = [{"chosen": PROMPT + " Hello!", "rejected": PROMPT + " Go away."},
            {"chosen": PROMPT + " Same", "rejected": PROMPT + " Same"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_convert_prints_summary_and_writes_report(tmp_path):
    source = write_hh(tmp_path / "hh.jsonl")
    out, report = tmp_path / "rm.jsonl", tmp_path / "report.json"
    result = runner.invoke(app, ["data", "convert", str(source), "--to", "rm", "-o", str(out),
                                 "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "format hh-rlhf" in result.output and "skipped identical-pair: 1 (first lines: 2)" in result.output
    assert json.loads(out.read_text()) == {"instruction": PROMPT, "chosen": " Hello!", "rejected": " Go away."}
    assert json.loads(report.read_text())["rows_written"] == 1


def test_convert_refuses_to_clobber_then_force(tmp_path):
    source = write_hh(tmp_path / "hh.jsonl")
    out = tmp_path / "rm.jsonl"
    out.write_text("old\n")
    result = runner.invoke(app, ["data", "convert", str(source), "--to", "rm", "-o", str(out)])
    assert result.exit_code == 2 and "already exists" in result.output and "--force" in result.output
    assert out.read_text() == "old\n"
    result = runner.invoke(app, ["data", "convert", str(source), "--to", "rm", "-o", str(out), "--force"])
    assert result.exit_code == 0 and out.read_text() != "old\n"


def test_convert_malformed_json_exit_2_names_file_and_line(tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text(json.dumps({"chosen": PROMPT + " a", "rejected": PROMPT + " b"}) + "\n{oops\n")
    result = runner.invoke(app, ["data", "convert", str(source), "--to", "rm", "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2
    assert f"{source}:2:" in result.output and "malformed JSON" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.jsonl").exists()


def test_convert_strict_and_output_equal_input(tmp_path):
    source = write_hh(tmp_path / "hh.jsonl")
    result = runner.invoke(app, ["data", "convert", str(source), "--to", "rm", "-o", str(tmp_path / "o.jsonl"),
                                 "--strict"])
    assert result.exit_code == 2 and f"{source}:2:" in result.output and "identical-pair" in result.output
    result = runner.invoke(app, ["data", "convert", str(source), "--to", "rm", "-o", str(source), "--force"])
    assert result.exit_code == 2 and "is the input" in result.output


def test_convert_val_split_and_fields(tmp_path):
    source = tmp_path / "q.csv"
    source.write_text("query\n" + "".join(f"question {i}\n" for i in range(100)))
    out = tmp_path / "ppo.jsonl"
    result = runner.invoke(app, ["data", "convert", str(source), "--to", "ppo", "-o", str(out),
                                 "--field", "prompt=query", "--val-split", "20", "--seed", "1"])
    assert result.exit_code == 0, result.output
    train, validation = out.read_text().splitlines(), (tmp_path / "ppo.validation.jsonl").read_text().splitlines()
    assert len(train) + len(validation) == 100 and validation
    assert "validation:" in result.output


def test_convert_missing_input_and_bad_target(tmp_path):
    result = runner.invoke(app, ["data", "convert", str(tmp_path / "nope.jsonl"), "--to", "rm", "-o",
                                 str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and "not found" in result.output
    source = write_hh(tmp_path / "hh.jsonl")
    result = runner.invoke(app, ["data", "convert", str(source), "--to", "dpo", "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and "--to must be one of rm, ppo, sft" in result.output


def test_example_raw_file_converts_through_the_cli(tmp_path):
    out = tmp_path / "rm.jsonl"
    result = runner.invoke(app, ["data", "convert", str(EXAMPLES / "raw" / "rm_hh.jsonl"), "--to", "rm",
                                 "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == (EXAMPLES / "rm.jsonl").read_bytes()
    assert "skipped prompt-mismatch: 1" in result.output


def test_formats_lists_every_format():
    result = runner.invoke(app, ["data", "formats"])
    assert result.exit_code == 0
    for name in ("hh-rlhf", "shp", "pku-safe-rlhf", "trl", "oasst", "alpaca", "dolly", "sharegpt", "orca-dpo"):
        assert name in result.output
    as_json = json.loads(runner.invoke(app, ["data", "formats", "--json"]).output)
    assert "prompt-mismatch" in as_json["skip_reasons"]


def test_inspect(tmp_path):
    result = runner.invoke(app, ["data", "inspect", str(EXAMPLES / "raw" / "rm_hh.jsonl")])
    assert result.exit_code == 0, result.output
    assert "format hh-rlhf" in result.output and "503 rows" in result.output
    assert "identical pairs: 1" in result.output  # the deliberately broken row
    result = runner.invoke(app, ["data", "inspect", str(EXAMPLES / "rm.jsonl"), "--json"])
    assert json.loads(result.output)["rows"] == 500


def test_inspect_with_tokenizer_from_tiny_model(tiny_model_dir):
    result = runner.invoke(app, ["data", "inspect", str(EXAMPLES / "rm.jsonl"), "--tokenizer", str(tiny_model_dir),
                                 "--max-length", "16", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["token_lengths"]["chosen"]["max"] > 0 and report["rows_over_max_length"] > 0


def test_data_commands_do_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from rlhfctl.cli.app import app\n"
        f"result = CliRunner().invoke(app, ['data', 'convert', {str(EXAMPLES / 'raw' / 'ppo_prompts.jsonl')!r},"
        " '--to', 'ppo', '-o', sys.argv[1]])\n"
        "assert result.exit_code == 0, result.output\n"
        "heavy = [name for name in ('torch', 'ray', 'transformers', 'datasets') if name in sys.modules]\n"
        "print(heavy)\n"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        output = subprocess.run([sys.executable, "-c", code, str(Path(folder) / "p.jsonl")], capture_output=True,
                                text=True, check=True).stdout
    assert output.strip() == "[]"


def test_convert_summary_renders_as_a_rich_table(tmp_path):
    from io import StringIO

    from rich.console import Console

    from rlhfctl.cli.data_cmd import _convert_table
    from rlhfctl.data.convert import ConvertRequest, convert_file

    report = convert_file(ConvertRequest(str(write_hh(tmp_path / "hh.jsonl")), tmp_path / "rm.jsonl", "rm"))
    console = Console(file=StringIO(), width=120, force_terminal=True, color_system=None)
    console.print(_convert_table(report))
    text = console.file.getvalue()
    assert "hh-rlhf (detected)" in text and "skipped identical-pair" in text and "read" in text
