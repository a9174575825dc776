"""Config templates (``templates/<stage>.toml``) and rendering chosen values into them.

A template is a valid, commented TOML config with one comment line above each key; optional keys appear as a
commented-out example (``# validation_file = "..."``). Rendering substitutes values into the template *text*
(key by key, section by section), so every comment survives and the result reads like the template.

Templates are found inside an installed wheel (``rlhfctl/templates``, force-included by pyproject) first, then in
the repository's top-level ``templates/`` folder (editable installs and source checkouts).
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfctl.config.schema import STAGES
from rlhfctl.errors import RuntimeFailure, UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


class _CommentOut:
    """Marker value: turn the key's line into a commented-out example."""

    def __repr__(self) -> str:
        return "COMMENT_OUT"


COMMENT_OUT: Any = _CommentOut()

_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-]+)\s*\]\s*(#.*)?$")
_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<comment>#\s*)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*)$")


@dataclass(frozen=True)
class TemplateInfo:
    """One bundled template: its stage, where it was found and its first comment line."""

    stage: str
    path: Path
    summary: str


def template_path(stage: str) -> Path:
    """The template file of a stage: the installed package's copy first, else the repository's."""
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    packaged = importlib.resources.files("rlhfctl").joinpath("templates", f"{stage}.toml")
    if packaged.is_file():
        return Path(str(packaged))
    in_repo = Path(__file__).resolve().parents[2] / "templates" / f"{stage}.toml"
    if in_repo.is_file():
        return in_repo
    raise RuntimeFailure(
        f"the {stage} template is missing from this installation (looked in the package and in {in_repo.parent})",
        hint="Reinstall rlhfctl (pip install --force-reinstall rlhfctl).",
    )


def template_text(stage: str) -> str:
    return template_path(stage).read_text(encoding="utf-8")


def template_defaults(stage: str) -> dict[str, Any]:
    """The template parsed as TOML (its values are the defaults the wizard offers)."""
    return tomllib.loads(template_text(stage))


def list_templates() -> list[TemplateInfo]:
    infos = []
    for stage in STAGES:
        path = template_path(stage)
        first = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")), "")
        infos.append(TemplateInfo(stage, path, first.lstrip("# ").strip()))
    return infos


def toml_value(value: Any) -> str:
    """A Python value as TOML value text (inline tables for dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML cannot hold the number {value}")
        return repr(value)
    if isinstance(value, (str, os.PathLike)):
        return json.dumps(os.fspath(value), ensure_ascii=False)  # JSON escapes are valid TOML basic-string escapes
    if isinstance(value, Mapping):
        items = [f"{_toml_key(str(key))} = {toml_value(item)}" for key, item in value.items()]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_\-]+", key) else json.dumps(key, ensure_ascii=False)


def render_template(stage: str, values: Mapping[str, Any], *, text: str | None = None) -> str:
    """Substitute ``{"section.key": value}`` into the stage's template text.

    A value replaces the key's line (a commented-out example becomes a real line); :data:`COMMENT_OUT` turns the
    key's line into a comment. Every key in ``values`` must appear in the template (live or commented out).
    """
    text = template_text(stage) if text is None else text
    remaining = dict(values)
    section = ""
    out = []
    for line in text.splitlines(keepends=True):
        newline = "\n" if line.endswith("\n") else ""
        header = _HEADER.match(line)
        if header:
            section = header.group(1)
            out.append(line)
            continue
        match = _KEY_LINE.match(line.rstrip("\n"))
        dotted = f"{section}.{match.group('key')}" if match and section else (match.group("key") if match else "")
        if not match or dotted not in remaining:
            out.append(line)
            continue
        value = remaining.pop(dotted)
        indent, key = match.group("indent"), match.group("key")
        if value is COMMENT_OUT:
            out.append(line if match.group("comment") else f"{indent}# {key} = {match.group('value')}{newline}")
        else:
            out.append(f"{indent}{key} = {toml_value(value)}{newline}")
    if remaining:
        raise KeyError(f"the {stage} template has no line for: {', '.join(sorted(remaining))}")
    return "".join(out)
