"""Bad input is refused cleanly: exit 2, the culprit named (file, line, key), no traceback, nothing written.

Table-driven: each case starts from a working workspace (good data, a one-worker RM config), breaks one thing,
runs one command through the CLI, and checks the four promises. Entry points are the earliest place the check
happens: ``validate-config`` (config problems), ``rm train --dry-run`` (data problems, before Ray or torch),
``data convert`` (conversion problems) and a real ``rm train`` on the single-process path (model and tokenizer
problems, which need the model loaded).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfctl.cli.app import app

from .conftest import Workspace

runner = CliRunner()


@dataclass(frozen=True)
class Case:
    """One bad input: ``build`` breaks the workspace and returns the command line; ``expect`` must appear."""

    name: str
    build: Callable[[Workspace], list[str]]
    expect: Callable[[Workspace], list[str]]
    unchanged: Callable[[Workspace], list[Path]] = field(default=lambda ws: [])  # files that must keep their bytes


def _config(ws: Workspace, **sections) -> Path:
    return ws.write_config(ws.config_dict(**sections))


def _broken_data(ws: Workspace, lines: dict[int, str | bytes], keep: int = 12) -> Path:
    """The good rows with 1-based line numbers replaced by raw text (or bytes)."""
    raw = [json.dumps(row).encode() for row in ws.rm_rows(keep)]
    for line, text in lines.items():
        raw[line - 1] = text if isinstance(text, bytes) else text.encode()
    ws.data.write_bytes(b"\n".join(raw) + b"\n")
    return ws.data


def _train_dry(ws: Workspace, **sections) -> list[str]:
    return ["rm", "train", str(_config(ws, **sections)), "--dry-run"]


def _validate(ws: Workspace, **sections) -> list[str]:
    return ["validate-config", str(_config(ws, **sections))]


def _validate_text(ws: Workspace, text: str | bytes) -> list[str]:
    path = ws.root / "rm.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["validate-config", str(path)]


def _row(**overrides) -> dict:
    row = {"instruction": "\n\nHuman: hi\n\nAssistant:", "chosen": " Hello, glad to help.", "rejected": " No."}
    row.update(overrides)
    return {key: value for key, value in row.items() if value is not None}


def _convert(ws: Workspace, rows: list | None = None, *, output: str = "converted.jsonl", extra=()) -> list[str]:
    source = ws.write_rows("raw.jsonl", rows) if rows is not None else ws.root / "raw.jsonl"
    return ["data", "convert", str(source), "--to", "rm", "-o", str(ws.root / output), *extra]


CONFIG_CASES = [
    Case("toml-syntax-error",
         lambda ws: _validate_text(ws, 'stage = "rm"\n\n[general\nseed = 1\n'),
         lambda ws: ["rm.toml:3", "TOML syntax error"]),
    Case("toml-unterminated-string",
         lambda ws: _validate_text(ws, 'stage = "rm"\n[general]\nbase_model = "tiny\n'),
         lambda ws: ["rm.toml:3", "TOML syntax error"]),
    Case("config-not-utf8",
         lambda ws: _validate_text(ws, b'stage = "rm"\n# caf\xe9\n'),
         lambda ws: ["rm.toml", "not UTF-8"]),
    Case("config-missing",
         lambda ws: ["validate-config", str(ws.root / "absent.toml")],
         lambda ws: ["absent.toml", "does not exist"]),
    Case("wrong-type-string-for-int",
         lambda ws: _validate(ws, training={"batch_size": "8"}),
         lambda ws: ["rm.toml:", "training.batch_size"]),
    Case("wrong-type-table-for-float",
         lambda ws: _validate(ws, training={"learning_rate": {"value": 1}}),
         lambda ws: ["rm.toml:", "training.learning_rate"]),
    Case("out-of-range-negative-learning-rate",
         lambda ws: _validate(ws, training={"learning_rate": -0.1}),
         lambda ws: ["rm.toml:", "training.learning_rate"]),
    Case("out-of-range-split-percentage",
         lambda ws: _validate(ws, dataset={"validation_split_percentage": 150}),
         lambda ws: ["rm.toml:", "dataset.validation_split_percentage"]),
    Case("out-of-range-zero-workers",
         lambda ws: _validate(ws, training={"num_training_workers": 0}),
         lambda ws: ["rm.toml:", "training.num_training_workers"]),
    Case("unknown-key-with-suggestion",
         lambda ws: _validate(ws, training={"learning_rat": 1e-3}),
         lambda ws: ["rm.toml:", "training.learning_rat", "learning_rate"]),
    Case("unknown-section",
         lambda ws: _validate(ws, trainig={"epochs": 1}),
         lambda ws: ["rm.toml:", "trainig"]),
    Case("missing-required-key",
         lambda ws: _validate(ws, general={"base_model": None}),
         lambda ws: ["rm.toml", "general.base_model"]),
    Case("missing-train-file",
         lambda ws: _validate(ws, dataset={"train_file": str(ws.root / "absent.jsonl")}),
         lambda ws: ["rm.toml:", "dataset.train_file", "absent.jsonl"]),
    Case("model-path-does-not-exist",
         lambda ws: _validate(ws, general={"base_model": str(ws.root / "no-model")}),
         lambda ws: ["rm.toml:", "general.base_model", "no-model"]),
    Case("bad-override",
         lambda ws: ["validate-config", str(_config(ws)), "training.epochs=many"],
         lambda ws: ["training.epochs", "many"]),
]

DATA_CASES = [
    Case("truncated-json-line",
         lambda ws: (_broken_data(ws, {3: '{"instruction": "hi", "chosen": " Hel'}), _train_dry(ws))[1],
         lambda ws: ["rm.jsonl:3"]),
    Case("malformed-json-line",
         lambda ws: (_broken_data(ws, {5: "this is not json"}), _train_dry(ws))[1],
         lambda ws: ["rm.jsonl:5"]),
    Case("truncated-last-line-without-newline",
         lambda ws: (ws.data.write_text(json.dumps(_row()) + "\n" + '{"instruction": "x", "cho', encoding="utf-8"),
                     _train_dry(ws))[1],
         lambda ws: ["rm.jsonl:2"]),
    Case("non-utf8-bytes",
         lambda ws: (_broken_data(ws, {4: b'{"instruction": "caf\xe9", "chosen": "a", "rejected": "b"}'}),
                     _train_dry(ws))[1],
         lambda ws: ["rm.jsonl", "UTF-8"]),
    Case("empty-dataset",
         lambda ws: (ws.data.write_text("", encoding="utf-8"), _train_dry(ws))[1],
         lambda ws: ["rm.jsonl", "empty"]),
    Case("blank-lines-only-dataset",
         lambda ws: (ws.data.write_text("\n\n  \n", encoding="utf-8"), _train_dry(ws))[1],
         lambda ws: ["rm.jsonl", "empty"]),
    Case("row-missing-chosen",
         lambda ws: (_broken_data(ws, {6: json.dumps(_row(chosen=None))}), _train_dry(ws))[1],
         lambda ws: ["rm.jsonl:6", "chosen"]),
    Case("row-missing-prompt",
         lambda ws: (_broken_data(ws, {2: json.dumps(_row(instruction=None))}), _train_dry(ws))[1],
         lambda ws: ["rm.jsonl:2", "instruction"]),
    Case("row-wrong-value-type",
         lambda ws: (_broken_data(ws, {7: json.dumps(_row(rejected=["a", "list"]))}), _train_dry(ws))[1],
         lambda ws: ["rm.jsonl:7", "rejected"]),
    Case("row-bad-margin",
         lambda ws: (_broken_data(ws, {8: json.dumps(_row(margin="large"))}), _train_dry(ws))[1],
         lambda ws: ["rm.jsonl:8", "margin"]),
    Case("row-not-an-object",
         lambda ws: (_broken_data(ws, {1: "[1, 2, 3]"}), _train_dry(ws))[1],
         lambda ws: ["rm.jsonl:1"]),
    Case("fewer-rows-than-workers",
         lambda ws: (ws.write_rows("rm.jsonl", [_row()]),
                     _train_dry(ws, training={"num_training_workers": 2}))[1],
         lambda ws: ["rm.jsonl", "workers"]),
    Case("missing-validation-file-via-override",
         lambda ws: ["rm", "train", str(_config(ws, dataset={"validation_split_percentage": None})),
                     f"dataset.validation_file={ws.root / 'absent-val.jsonl'}", "--dry-run"],
         lambda ws: ["dataset.validation_file", "absent-val.jsonl"]),
]

CONVERT_CASES = [
    Case("convert-all-rows-skipped",
         lambda ws: _convert(ws, [_row(chosen=""), _row(rejected="   "), _row(chosen=" same", rejected=" same")]),
         lambda ws: ["raw.jsonl", "no rows converted", "all 3 rows read were skipped", "identical-pair"]),
    Case("convert-output-equals-input",
         lambda ws: _convert(ws, [_row()], output="raw.jsonl", extra=["--force"]),
         lambda ws: ["raw.jsonl"],
         unchanged=lambda ws: [ws.root / "raw.jsonl"]),
    Case("convert-output-exists-without-force",
         lambda ws: ((ws.root / "converted.jsonl").write_text("keep me\n", encoding="utf-8"),
                     _convert(ws, [_row()]))[1],
         lambda ws: ["converted.jsonl", "--force"],
         unchanged=lambda ws: [ws.root / "converted.jsonl"]),
    Case("convert-malformed-json",
         lambda ws: ((ws.root / "raw.jsonl").write_text(json.dumps(_row()) + "\n{oops\n", encoding="utf-8"),
                     _convert(ws))[1],
         lambda ws: ["raw.jsonl:2"]),
    Case("convert-non-utf8",
         lambda ws: ((ws.root / "raw.jsonl").write_bytes(b'{"instruction": "caf\xe9", "chosen": "a", "rejected": "b"}\n'),
                     _convert(ws))[1],
         lambda ws: ["raw.jsonl", "UTF-8"]),
    Case("convert-empty-input",
         lambda ws: ((ws.root / "raw.jsonl").write_text("", encoding="utf-8"), _convert(ws))[1],
         lambda ws: ["raw.jsonl", "empty"]),
    Case("convert-missing-input",
         lambda ws: ["data", "convert", str(ws.root / "absent.jsonl"), "--to", "rm", "-o",
                     str(ws.root / "converted.jsonl")],
         lambda ws: ["absent.jsonl"]),
]


def _snapshot(paths: list[Path]) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in paths}


def _assert_refused(ws: Workspace, case: Case, argv: list[str], before: dict[Path, bytes]) -> None:
    result = runner.invoke(app, argv)
    output = result.output
    assert result.exit_code == 2, f"{case.name}: exit {result.exit_code}\n{output}\n{result.exception!r}"
    assert "Traceback" not in output, output
    assert "unexpected error" not in output, output
    for text in case.expect(ws):
        assert text in output, f"{case.name}: {text!r} not in:\n{output}"
    assert not ws.output_dir.exists(), f"{case.name}: output_dir was created"
    assert not ws.export_dir.exists(), f"{case.name}: checkpoint_dir was created"
    assert not (ws.root / "converted.jsonl").exists() or (ws.root / "converted.jsonl") in before
    leftovers = [path.name for path in ws.root.iterdir() if path.name.startswith(".") and path.name.endswith(".tmp")]
    assert not leftovers, f"{case.name}: temporary files left: {leftovers}"
    for path, content in before.items():
        assert path.read_bytes() == content, f"{case.name}: {path} was modified"


@pytest.mark.parametrize("case", CONFIG_CASES + DATA_CASES + CONVERT_CASES, ids=lambda case: case.name)
def test_bad_input_is_refused_cleanly(workspace, case):
    argv = case.build(workspace)
    _assert_refused(workspace, case, argv, _snapshot(case.unchanged(workspace)))


# ----------------------------------------------------------------------------------------------- PPO limits


def _ppo_config(ws: Workspace, model_dir: str, **generation) -> Path:
    prompts = ws.write_rows("prompts.jsonl", [{"prompt": f"\n\nHuman: question {i}?\n\nAssistant:"} for i in range(8)])
    return ws.write_config({
        "stage": "ppo",
        "general": {"model_name": model_dir, "rm_name": model_dir, "output_dir": str(ws.output_dir),
                    "checkpoint_dir": str(ws.export_dir)},
        "dataset": {"train_file": str(prompts), "max_length": 16},
        "training": {"num_training_workers": 1},
        "generation": {"max_new_tokens": 32, **generation},
    }, name="ppo.toml")


def test_ppo_max_length_shorter_than_the_response_budget_is_refused(workspace):
    """PPO prompts get ``max_length - max_new_tokens`` tokens: a max_length that leaves no room for any prompt is
    a config error naming the key. (RM and SFT cut over-long prompts from the left by design, documented in the
    config reference, so a short max_length is not an error there.)"""
    config = _ppo_config(workspace, workspace.model_dir)
    result = runner.invoke(app, ["ppo", "train", str(config), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "dataset.max_length" in result.output and "max_new_tokens" in result.output
    assert "Traceback" not in result.output
    assert not workspace.output_dir.exists()


# ----------------------------------------------------------------------------------------------- model loading


def _train(ws: Workspace, **sections) -> list[str]:
    return ["rm", "train", str(_config(ws, **sections)), "--quiet"]


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """Offline hub with an empty cache: no hub id can be fetched (huggingface_hub reads the flag at import)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _assert_train_refused(ws: Workspace, argv: list[str], expect: list[str]) -> None:
    result = runner.invoke(app, argv)
    output = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}\n{output}\n{result.exception!r}"
    assert "Traceback" not in output and "unexpected error" not in output, output
    for text in expect:
        assert text in output, f"{text!r} not in:\n{output}"
    assert not ws.output_dir.exists(), f"output_dir left behind: {sorted(p.name for p in ws.output_dir.iterdir())}"
    assert not ws.export_dir.exists()


def test_hub_id_that_cannot_be_fetched_offline(workspace, offline_hub):
    argv = _train(workspace, general={"base_model": "no-such-org/no-such-model"})
    _assert_train_refused(workspace, argv, ["no-such-org/no-such-model", "hub"])


def test_model_folder_that_is_not_a_model(workspace):
    (workspace.root / "not-a-model").mkdir()
    (workspace.root / "not-a-model" / "README.md").write_text("hello\n", encoding="utf-8")
    argv = _train(workspace, general={"base_model": str(workspace.root / "not-a-model")})
    _assert_train_refused(workspace, argv, ["not-a-model", "could not be loaded"])


@pytest.mark.needs_model
def test_tokenizer_without_pad_or_eos(workspace, tiny_model_copy):
    settings_path = tiny_model_copy / "tokenizer_config.json"
    settings = json.loads(settings_path.read_text(encoding="utf-8"))
    for key in ("eos_token", "pad_token"):
        settings.pop(key, None)
    settings_path.write_text(json.dumps(settings), encoding="utf-8")
    argv = _train(workspace, general={"base_model": str(tiny_model_copy)})
    _assert_train_refused(workspace, argv, [str(tiny_model_copy), "pad", "EOS"])


def test_existing_run_is_not_clobbered_without_force(workspace):
    """An output_dir holding an earlier run and a non-empty checkpoint_dir are refused (not overwritten)."""
    run_dir = workspace.output_dir / "rm_run" / "checkpoint_00000001"
    run_dir.mkdir(parents=True)
    marker = run_dir / "state.json"
    marker.write_text(json.dumps({"step": 1, "files": {}}), encoding="utf-8")
    result = runner.invoke(app, _train(workspace))
    assert result.exit_code == 2, result.output
    assert "already holds a rm run" in result.output and "--resume" in result.output and "--force" in result.output
    assert "Traceback" not in result.output
    assert marker.read_text(encoding="utf-8") == json.dumps({"step": 1, "files": {}})
    assert not (workspace.output_dir / "resolved_config.toml").exists()
