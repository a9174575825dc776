"""Config templates (``templates/<stage>.toml``), generated from the schema, and configs rendered from them.

A template is a valid TOML config with one comment line above each key (the first sentence of the key's
description); every key of the stage appears once, in schema order. An optional section (``[lora]``: its presence
turns LoRA on) is written commented out, header and keys, with its defaults; a value for one of its keys makes the
whole section live. A key with a default shows it, a required key
shows its example (``openai-community/gpt2``, ``data/rm.jsonl``), and an optional key (or one whose field gives an
example besides its default) appears as a commented-out example (``# validation_file = "..."``).
:func:`render_template` writes the same text with chosen values in place, so a config written by ``rlhfctl init``
reads like the template.

The files in ``templates/`` are this module's output; a test compares them. Regenerate them after changing the
schema with::

    python -m rlhfctl.config.templates

Templates are found inside an installed wheel (``rlhfctl/templates``, force-included by pyproject) first, then in
the repository's top-level ``templates/`` folder (editable installs and source checkouts).
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfctl.config.keys import (
    default_value,
    example_value,
    exclusive_key_groups,
    first_sentence,
    is_required,
    markers,
    stage_fields,
)
from rlhfctl.config.loader import tomllib
from rlhfctl.config.schema import CONFIG_CLASSES, STAGES
from rlhfctl.config.schema.markers import LiveExample
from rlhfctl.errors import RuntimeFailure, UserError

REPOSITORY_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


class _CommentOut:
    """Marker value: write the key as a commented-out example."""

    def __repr__(self) -> str:
        return "COMMENT_OUT"


COMMENT_OUT: Any = _CommentOut()


@dataclass(frozen=True)
class TemplateInfo:
    """One bundled template: its stage, where it was found and its first comment line."""

    stage: str
    path: Path
    summary: str


# ------------------------------------------------------------------------------------------------ the files


def template_path(stage: str) -> Path:
    """The template file of a stage: the installed package's copy first, else the repository's."""
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    packaged = importlib.resources.files("rlhfctl").joinpath("templates", f"{stage}.toml")
    if packaged.is_file():
        return Path(str(packaged))
    in_repo = REPOSITORY_TEMPLATES / f"{stage}.toml"
    if in_repo.is_file():
        return in_repo
    raise RuntimeFailure(
        f"the {stage} template is missing from this installation (looked in the package and in {in_repo.parent})",
        hint="Reinstall rlhfctl (pip install --force-reinstall rlhfctl).",
    )


def template_text(stage: str) -> str:
    return template_path(stage).read_text(encoding="utf-8")


def list_templates() -> list[TemplateInfo]:
    infos = []
    for stage in STAGES:
        path = template_path(stage)
        first = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")), "")
        infos.append(TemplateInfo(stage, path, first.lstrip("# ").strip()))
    return infos


# ------------------------------------------------------------------------------------------------ generating


def template_values(stage: str) -> dict[str, Any]:
    """``{"section.key": value}`` the template shows live: examples of required keys, defaults of the others.

    A key with a default *and* an example (``trust_remote_code``, default false, example true) is left out: the
    template shows the example commented out, as it does for optional keys, unless the field is marked
    :data:`~rlhfctl.config.schema.markers.LIVE_EXAMPLE`.
    """
    values = {}
    optional = CONFIG_CLASSES[stage].optional_sections()
    for key, field in stage_fields(stage).items():
        if key.split(".")[0] in optional:
            continue  # an optional section ([lora]) is shown commented out: its presence would turn it on
        if is_required(field) or markers(field, LiveExample):
            values[key] = example_value(field, stage)
        elif default_value(field) is not None and not field.examples:
            values[key] = default_value(field)
    return values


def template_defaults(stage: str) -> dict[str, Any]:
    """The template parsed as TOML (its values are the defaults the wizard offers)."""
    return tomllib.loads(render_template(stage))


def render_template(stage: str, values: Mapping[str, Any] | None = None) -> str:
    """The stage's template with ``{"section.key": value}`` in place of the template's values.

    A value for an optional key makes its commented-out example a live line, and comments out the keys it
    excludes (a ``dataset.validation_file`` replaces ``dataset.validation_split_percentage``); :data:`COMMENT_OUT`
    comments a key out. Every key in ``values`` must be a key of the stage.
    """
    fields = stage_fields(stage)
    values = dict(values or {})
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise KeyError(f"the {stage} template has no line for: {', '.join(unknown)}")
    shown = template_values(stage)
    for group in exclusive_key_groups():
        chosen = [key for key in group if key in values and values[key] is not COMMENT_OUT]
        for key in group:
            if chosen and key not in chosen:
                values[key] = COMMENT_OUT
    model_cls = CONFIG_CLASSES[stage]
    lines = [f"# {model_cls.summary}",
             f"# Run it with: rlhfctl {stage} train {stage}.toml   (check it first with: rlhfctl validate-config "
             f"{stage}.toml)",
             "# Relative paths are resolved against this file's folder. Reference of every key: "
             "docs/config-reference.md",
             f"stage = {toml_value(stage)}"]
    sections = model_cls.sections()
    live_optional = {key.split(".")[0] for key, value in values.items() if value is not COMMENT_OUT}
    section, section_off = "", False
    for key, field in fields.items():
        key_section, name = key.split(".")
        if key_section != section:
            section = key_section
            section_off = section in model_cls.optional_sections() and section not in live_optional
            if section_off:
                lines += ["", f"# {sections[section].optional_section}", f"# [{section}]"]
            else:
                lines += ["", f"[{section}]"]
        lines.append(f"# {first_sentence(field.description or '')}")
        if section in model_cls.optional_sections():
            value = COMMENT_OUT if section_off else values.get(key, default_value(field))
        else:
            value = values.get(key, shown.get(key, COMMENT_OUT))
        if value is COMMENT_OUT and section_off:
            lines.append(f"# {name} = {toml_value(default_value(field))}")
        elif value is COMMENT_OUT:
            example = example_value(field, stage)
            example = shown.get(key) if example is None else example
            if example is None:
                raise ValueError(f"{key} is optional but its schema field has no example to show")
            lines.append(f"# {name} = {toml_value(example)}")
        else:
            lines.append(f"{name} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """A Python value as TOML value text (inline tables for dicts, whose whole numbers are written as integers,
    as in ``{ CPU = 1 }``)."""
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
        items = [f"{_toml_key(str(key))} = {toml_value(_whole(item))}" for key, item in value.items()]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_\-]+", key) else json.dumps(key, ensure_ascii=False)


def write_templates(folder: Path = REPOSITORY_TEMPLATES) -> list[Path]:
    """Write every stage's template into ``folder``; returns the files whose text changed."""
    changed = []
    for stage in STAGES:
        path = folder / f"{stage}.toml"
        text = render_template(stage)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


if __name__ == "__main__":
    for written in write_templates():
        print(f"wrote {written}")
