"""--png: the main charts as PNG images, written atomically, never over existing images without --force."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhfctl.errors import UserError
from rlhfctl.report.png import plan_pngs, planned_images, write_pngs
from rlhfctl.report.run_data import load_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_images_per_panel_plus_frontier_and_timeline(make_run, tmp_path: Path) -> None:
    runs = load_runs([make_run("ppo")])
    names = [name for name, _, _ in planned_images(runs)]
    assert names[:3] == ["loss.png", "reward.png", "kl.png"] and names[-2:] == ["frontier.png", "timeline.png"]
    written = write_pngs(plan_pngs(runs, tmp_path / "images", force=False), tmp_path / "images")
    assert [path.name for path in written] == names
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(names)  # no temporary files left


def test_existing_images_are_kept_without_force(make_run, tmp_path: Path) -> None:
    runs = load_runs([make_run("rm", stage="rm")])
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "loss.png").write_bytes(b"mine")
    with pytest.raises(UserError) as error:
        plan_pngs(runs, folder, force=False)
    assert error.value.message == f"--png {folder} already holds loss.png" and "--force" in error.value.hint
    assert (folder / "loss.png").read_bytes() == b"mine"
    write_pngs(plan_pngs(runs, folder, force=True), folder)
    assert (folder / "loss.png").read_bytes().startswith(PNG_SIGNATURE)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        plan_pngs(runs, tmp_path / "file", force=True)
