"""Pydantic validation errors -> :class:`ConfigIssue` objects a person can act on.

Each issue names the dotted key, the value found, what was expected, the line in the TOML text where the key sits
and, for unknown keys and misspelt choices, a "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Collection
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from rlhfctl.config.keys import SEED_SECTIONS, field_info, known_keys
from rlhfctl.config.schema import CONFIG_CLASSES, STAGES
from rlhfctl.config.schema.stage import section_type
from rlhfctl.errors import ConfigIssue

FROM_COMMAND_LINE = "(set on the command line)"

_TYPE_MESSAGES = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string (in quotes)",
    "path_type": "expected a path (a string in quotes)",
    "dict_type": "expected a table such as { CPU = 1 }",
}
_BOUND_MESSAGES = {
    "greater_than": ("gt", "must be greater than {}"),
    "greater_than_equal": ("ge", "must be at least {}"),
    "less_than": ("lt", "must be less than {}"),
    "less_than_equal": ("le", "must be at most {}"),
}


def issues_from_validation(
    exc: ValidationError, stage: str, text: str, overridden: Collection[str] = ()
) -> list[ConfigIssue]:
    model_cls = CONFIG_CLASSES[stage]
    issues = []
    for error in exc.errors():
        loc = _key_parts(model_cls, error["loc"])
        key = dotted_key(loc)
        found = error.get("input")
        kind = error["type"]
        ctx = error.get("ctx", {})
        if kind == "union_tag_invalid":  # an unknown name in a list of tables told apart by it (reward.functions)
            choices = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
            found = ctx.get("tag")
            message = f"unknown {ctx.get('discriminator', 'name').strip(chr(39))} {found!r}; expected one of " \
                      f"{', '.join(choices)}"
            close = difflib.get_close_matches(str(found), choices, n=1, cutoff=0.6)
            if close:
                message += f"; did you mean '{close[0]}'?"
        elif kind == "extra_forbidden":
            message = "unknown key" + _unknown_key_hint(model_cls, stage, loc)
        elif kind == "missing":
            field = field_info(stage, key)
            what = f" ({field.description})" if field is not None and field.description else ""
            message = f"required key is missing{what}"
            found = None
        elif kind == "literal_error":
            message = f"expected one of {ctx.get('expected', '')}, found {found!r}"
            choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
            close = [choice for choice in choices if isinstance(found, str) and choice.lower() == found.lower()]
            close = close or difflib.get_close_matches(str(found), choices, n=1, cutoff=0.6)
            if close:
                message += f"; did you mean '{close[0]}'?"
        elif kind in ("model_type", "model_attributes_type"):
            message = f"expected a [{key}] table, found {found!r}"
        elif kind in _TYPE_MESSAGES:
            message = f"{_TYPE_MESSAGES[kind]}, found {found!r}"
        elif kind in _BOUND_MESSAGES:
            bound_name, template = _BOUND_MESSAGES[kind]
            message = f"{template.format(ctx.get(bound_name))}, found {found!r}"
        else:
            message = error["msg"].removeprefix("Value error, ")
            if found is not None and not isinstance(found, dict) and "found" not in message:
                message = f"{message} (found {found!r})"
        if key in overridden:
            issues.append(ConfigIssue(key, f"{message} {FROM_COMMAND_LINE}", found, None))
        else:
            issues.append(ConfigIssue(key, message, found, locate(text, loc)))
    return issues


def _key_parts(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Pydantic's error location as the parts of a config key: list indexes kept as ``"[2]"`` parts, the tag a
    discriminated union adds (``reward.functions[2].regex.pattern``) dropped: ``["reward", "functions", "[2]",
    "pattern"]``."""
    parts: list[str] = []
    node: Any = model_cls
    for part in loc:
        node = _unwrap(node)
        if isinstance(part, int):
            parts.append(f"[{part}]")
            node = get_args(node)[0] if get_origin(node) is list and get_args(node) else None
            continue
        if get_origin(node) in (Union, types.UnionType):
            members = [member for member in map(_unwrap, get_args(node)) if isinstance(member, type)
                       and issubclass(member, BaseModel)]
            tagged = [member for member in members if _tag(member) == part]
            if tagged:  # the union's tag: not part of the key
                node = tagged[0]
                continue
        parts.append(str(part))
        field = node.model_fields.get(part) if isinstance(node, type) and issubclass(node, BaseModel) else None
        node = field.annotation if field is not None else None
    return parts


def _unwrap(annotation: Any) -> Any:
    """``Annotated[X, ...]`` -> X; ``Optional[X]`` -> X."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation) \
                and len(get_args(annotation)) == 2:
            annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
        else:
            return annotation


def _tag(model: type[BaseModel]) -> str | None:
    """The ``Literal`` value of a tagged model's ``name`` field (the discriminator rlhfctl's schema uses)."""
    field = model.model_fields.get("name")
    values = get_args(field.annotation) if field is not None and get_origin(field.annotation) is Literal else ()
    return values[0] if len(values) == 1 else None


def dotted_key(parts: list[str]) -> str:
    """``["reward", "functions", "[2]", "pattern"]`` -> ``reward.functions[2].pattern``."""
    return ".".join(parts).replace(".[", "[")


def _unknown_key_hint(model_cls: type[BaseModel], stage: str, loc: list[str]) -> str:
    """"; did you mean ...?" for an unknown key: a close key in its section, the section it belongs in, or the
    stage that has it."""
    dotted = ".".join(loc)
    other_stages = [name for name in STAGES if name != stage and dotted in known_keys(name)]
    if other_stages:
        return f"; it is a setting of the {' and '.join(other_stages)} stage, not '{stage}'"
    node: type[BaseModel] | None = model_cls
    for part in loc[:-1]:
        field = node.model_fields.get(part) if node else None
        node = section_type(field.annotation) if field is not None else None  # Optional[LoraConfig] too
    if node is None:
        return ""
    names = list(node.model_fields) + (list(SEED_SECTIONS) if len(loc) == 1 else [])
    match = difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.6)
    if match:
        return f"; did you mean '{'.'.join([*loc[:-1], SEED_SECTIONS.get(match[0], match[0])])}'?"
    for section_name, field in model_cls.model_fields.items():  # the key may belong to another section
        annotation = section_type(field.annotation)
        if annotation is not None and loc[-1] in annotation.model_fields:
            return f"; did you mean '{section_name}.{loc[-1]}'?"
    return ""


def locate(text: str, loc: list[str]) -> int | None:
    """Best-effort 1-based line of a dotted key in TOML text (``[section]`` headers and ``key =`` lines; an item of
    a table list, ``["reward", "functions", "[2]", "pattern"]``, in the third ``[[reward.functions]]`` table)."""
    if not text or not loc:
        return None
    if len(loc) >= 3 and re.fullmatch(r"\[\d+\]", loc[2]):
        found = _locate_in_table_list(text, f"{loc[0]}.{loc[1]}", int(loc[2][1:-1]), loc[3] if len(loc) > 3 else None)
        if found is not None:
            return found
        return locate(text, loc[:2])  # written inline (functions = [{ ... }]): the key's own line
    section_aliases = {v: k for k, v in SEED_SECTIONS.items()}
    want_section = loc[0] if len(loc) > 1 else ""
    key = loc[1] if len(loc) > 1 else loc[0]
    current = ""
    section_line = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([A-Za-z0-9_.\-]+)\s*\]", stripped)
        if header:
            current = header.group(1)
            if len(loc) == 1 and current == key:
                return number
            if current in (want_section, section_aliases.get(want_section)):
                section_line = number
            continue
        if current in (want_section, section_aliases.get(want_section)) and re.match(
            rf"^{re.escape(key)}\s*=", stripped
        ):
            return number
    return section_line


def _locate_in_table_list(text: str, table: str, index: int, key: str | None) -> int | None:
    """The line of ``key`` (or the header) in the ``index``-th ``[[table]]`` of ``text``, or None."""
    seen, inside, header_line = -1, False, None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            inside = False
            if re.match(rf"^\[\[\s*{re.escape(table)}\s*\]\]", stripped):
                seen += 1
                inside = seen == index
                header_line = number if inside else header_line
            continue
        if inside and key is not None and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return number
    return header_line if seen >= index else None


def sorted_by_line(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return sorted(issues, key=lambda issue: (issue.line is None, issue.line or 0))
