"""Atomic outputs get the permissions a plain ``open()``/``mkdir()`` would give them, not mkstemp's owner-only."""

from __future__ import annotations

import os
import stat

import pytest

from rlhfctl.fileio import atomic_directory, atomic_write_text


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_atomic_file_is_readable_by_others_under_the_usual_umask(tmp_path, umask_022):
    target = tmp_path / "report.html"
    atomic_write_text(target, "<html></html>")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert target.read_text() == "<html></html>"


def test_atomic_file_follows_a_stricter_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        target = tmp_path / "secret.toml"
        atomic_write_text(target, "x = 1\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_atomic_directory_is_listable_by_others_under_the_usual_umask(tmp_path, umask_022):
    target = tmp_path / "export"
    with atomic_directory(target) as folder:
        (folder / "config.json").write_text("{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
