"""Atomic writes: a temporary file (or folder) next to the target, then a rename.

Readers never see a half-written output, and an interrupted write leaves the previous version in place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rlhfctl.errors import UserError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_permissions(path: str, *, directory: bool) -> None:
    """``mkstemp``/``mkdtemp`` create owner-only files; give the output what ``open()`` would (0666/0777 & ~umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_current_umask())


def refuse_to_clobber(target: Path, *, force: bool, what: str = "output") -> None:
    """Raise a UserError when ``target`` exists and ``--force`` was not given."""
    if Path(target).exists() and not force:
        raise UserError(f"{what} already exists: {target}", hint="Pass --force to replace it.")


@contextlib.contextmanager
def atomic_open(target: Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``target``; on success it is fsynced and renamed over ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    kwargs = {"encoding": encoding} if "b" not in mode else {}
    try:
        _usual_permissions(tmp_name, directory=False)
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_text(target: Path, text: str) -> None:
    with atomic_open(target, "w") as handle:
        handle.write(text)


@contextlib.contextmanager
def atomic_directory(target: Path, *, force: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` (old one removed)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        _usual_permissions(str(tmp_dir), directory=True)
        yield tmp_dir
        if target.exists():
            if not force:
                raise UserError(f"{target} already exists", hint="Pass --force to replace it.")
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp_dir, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_dir, target)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
