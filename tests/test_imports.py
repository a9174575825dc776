"""The light commands must not import torch, ray, transformers or datasets (the CLI has to start fast).

Each command runs in a fresh interpreter through a small driver that calls ``rlhfctl.cli.app.main`` and then
reports which heavy modules ended up in ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "ray", "transformers", "datasets")
DRIVER = """
import json, sys
from rlhfctl.cli.app import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
heavy = sorted(name for name in {heavy!r} if name in sys.modules)
print("\\n@@" + json.dumps({{"code": code, "heavy": heavy}}))
""".format(heavy=HEAVY)


def _run(args: list[str], cwd: Path) -> dict:
    completed = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=cwd, capture_output=True, text=True,
                               timeout=120, stdin=subprocess.DEVNULL)
    marker = completed.stdout.rsplit("@@", 1)
    assert len(marker) == 2, completed.stdout + completed.stderr
    return json.loads(marker[1])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("imports")
    (folder / "data").mkdir()
    (folder / "data" / "rm.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    from rlhfctl.config.templates import template_text

    (folder / "rm.toml").write_text(template_text("rm"))  # names data/rm.jsonl
    (folder / "old.conf").write_text('{"General": {"base_model": "gpt2", "output_dir": "o", "checkpoint_dir": "c"},'
                                     ' "Dataset": {"train_file": "data/rm.jsonl"}}\n')
    return folder


@pytest.mark.parametrize(
    ("args", "expected_code"),
    [
        (["--help"], 0),
        (["init", "--stage", "rm", "--defaults", "-o", "new-rm.toml"], 0),
        (["validate-config", "rm.toml", "training.epochs=2"], 0),
        (["validate-config", "rm.toml", "training.epochs=0"], 2),
        (["config", "show", "rm.toml"], 0),
        (["config", "migrate", "old.conf", "-o", "migrated.toml", "--stage", "rm"], 0),
        (["init", "--list"], 0),
    ],
)
def test_light_commands_do_not_import_heavy_libraries(args: list[str], expected_code: int, workdir: Path) -> None:
    report = _run(args, workdir)
    assert report["code"] == expected_code, report
    assert report["heavy"] == [], f"rlhfctl {' '.join(args)} imported {report['heavy']}"
