"""`rlhfctl report` through Typer's CliRunner: outputs, exit codes, messages; start-up stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from rlhfctl.cli.app import app

runner = CliRunner()


def test_without_output_a_summary_is_printed(make_run) -> None:
    result = runner.invoke(app, ["report", str(make_run("ppo"))], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "stage ppo · finished · step 30 of 30" in result.output
    assert "Write the interactive report with -o report.html" in result.output


def test_html_report_is_written_and_never_clobbered_without_force(make_run, tmp_path: Path) -> None:
    run = make_run("ppo")
    target = tmp_path / "out" / "report.html"
    result = runner.invoke(app, ["report", str(run), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert f"wrote {target} (1 run(s)," in result.output
    first = target.read_text()
    assert first.startswith("<!DOCTYPE html>")
    again = runner.invoke(app, ["report", str(run), "-o", str(target)])
    assert again.exit_code == 2
    assert f"error: report already exists: {target}" in again.output and "--force" in again.output
    assert target.read_text() == first
    forced = runner.invoke(app, ["report", str(run), str(make_run("other")), "-o", str(target), "--force"])
    assert forced.exit_code == 0, forced.output
    assert "2 run(s)" in forced.output and [p.name for p in target.parent.iterdir()] == ["report.html"]


def test_a_folder_that_is_not_a_run_exits_2_saying_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["report", str(tmp_path / "empty"), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2
    assert "is not an rlhfctl run folder: it has none of metrics.jsonl" in result.output
    assert not (tmp_path / "r.html").exists()
    folder_target = runner.invoke(app, ["report", str(tmp_path / "empty"), "-o", str(tmp_path)])
    assert folder_target.exit_code == 2 and "is a folder: give the HTML file to write" in folder_target.output


def test_partly_written_metrics_are_reported_with_a_note(make_run, tmp_path: Path) -> None:
    run = make_run("live", finished=False)
    with open(run / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 31, "split"')
    result = runner.invoke(app, ["report", str(run), "-o", str(tmp_path / "live.html")])
    assert result.exit_code == 0, result.output
    assert "note live: metrics.jsonl line 34 is incomplete" in result.output


def test_png_images_next_to_the_html(make_run, tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(make_run("rm", stage="rm")), "-o", str(tmp_path / "rm.html"),
                                 "--png", str(tmp_path / "images")])
    assert result.exit_code == 0, result.output
    assert "image(s) into" in result.output and (tmp_path / "images" / "loss.png").exists()
    again = runner.invoke(app, ["report", str(make_run("rm2", stage="rm")), "-o", str(tmp_path / "rm2.html"),
                                "--png", str(tmp_path / "images")])
    assert again.exit_code == 2 and "already holds" in again.output
    assert not (tmp_path / "rm2.html").exists()  # refused before anything was written


DRIVER = """
import json, sys
from rlhfctl.cli.app import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(name for name in ("torch", "ray", "transformers", "plotly", "matplotlib") if name in sys.modules)
print("@@" + json.dumps({"code": code, "heavy": heavy}))
"""


def test_help_and_the_terminal_summary_import_no_plotting_library(make_run) -> None:
    for args in (["report", "--help"], ["report", str(make_run("ppo"))]):
        completed = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True,
                                   timeout=120, stdin=subprocess.DEVNULL)
        report = json.loads(completed.stdout.rsplit("@@", 1)[1])
        assert report == {"code": 0, "heavy": []}, completed.stderr
