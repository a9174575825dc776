"""`rlhfctl example models` and the guards of `rlhfctl example run` (the full run is tests/example/test_pipeline.py)."""

from __future__ import annotations

from typer.testing import CliRunner

from rlhfctl.cli.app import app

runner = CliRunner()


def test_models_writes_a_kit_and_refuses_to_overwrite_it(tmp_path):
    target = tmp_path / "models" / "tiny"
    result = runner.invoke(app, ["example", "models", str(target), "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "parameters" in result.output and (target / "model.safetensors").is_file()
    again = runner.invoke(app, ["example", "models", str(target)])
    assert again.exit_code == 2 and "--force" in again.output
    assert runner.invoke(app, ["example", "models", str(target), "--force"]).exit_code == 0


def test_models_rejects_an_unknown_preset(tmp_path):
    result = runner.invoke(app, ["example", "models", str(tmp_path / "m"), "--preset", "huge"])
    assert result.exit_code == 2
    assert "tiny" in result.output and "small" in result.output


def test_models_builds_other_architectures_as_they_ship(tmp_path):
    import json

    result = runner.invoke(app, ["example", "models", str(tmp_path / "mistral"), "--architecture", "mistral"])
    assert result.exit_code == 0, result.output
    assert "(mistral, preset tiny, seed 0)" in result.output
    assert json.loads((tmp_path / "mistral" / "config.json").read_text())["model_type"] == "mistral"
    tokenizer_config = json.loads((tmp_path / "mistral" / "tokenizer_config.json").read_text())
    assert "pad_token" not in tokenizer_config and "[INST]" in (tmp_path / "mistral" / "chat_template.jinja").read_text()
    unknown = runner.invoke(app, ["example", "models", str(tmp_path / "x"), "--architecture", "bloom"])
    assert unknown.exit_code == 2 and "llama" in unknown.output


def test_run_refuses_a_used_work_folder_without_force(tmp_path):
    workdir = tmp_path / "example-run"
    workdir.mkdir()
    (workdir / ".rlhfctl-example").write_text("", encoding="utf-8")
    (workdir / "models").mkdir()
    result = runner.invoke(app, ["example", "run", "--workdir", str(workdir)])
    assert result.exit_code == 2
    assert "--force" in result.output
    assert (workdir / "models").is_dir()


def test_run_never_deletes_a_folder_it_did_not_create(tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work", encoding="utf-8")
    result = runner.invoke(app, ["example", "run", "--workdir", str(precious), "--force"])
    assert result.exit_code == 2
    assert "refusing to delete" in result.output
    assert (precious / "thesis.tex").read_text(encoding="utf-8") == "years of work"
