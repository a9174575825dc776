"""TOML -> validated stage config, collecting every problem before failing once.

``load_config(path, stage=None, overrides=())`` is the only way the rest of rlhfctl reads a config file.
Relative paths inside the file are resolved against the file's folder; relative paths given as command-line
overrides against the current directory. Overrides are typed by the schema and checked against the stage's
keys before anything else, so a typo on the command line gets the same "did you mean" as one in the file.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rlhfctl.config.issues import FROM_COMMAND_LINE, issues_from_validation, locate, sorted_by_line
from rlhfctl.config.keys import (
    SEED_SECTIONS,
    exclusive_key_groups,
    field_info,
    is_table_field,
    known_keys,
    model_source_keys,
    must_exist_keys,
    path_keys,
    stage_keys,
    value_type,
)
from rlhfctl.config.schema import CONFIG_CLASSES, STAGES, StageConfig
from rlhfctl.config.schema.markers import ModelSource
from rlhfctl.errors import ConfigError, ConfigIssue

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


# ------------------------------------------------------------------------------------------------ reading


def parse_toml_file(path: Path) -> tuple[dict[str, Any], str]:
    """Read and parse a TOML file; syntax errors become a ConfigError naming the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue("", "the config file does not exist")], path) from None
    except IsADirectoryError:
        raise ConfigError([ConfigIssue("", "expected a TOML file, found a directory")], path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue("", f"the file is not UTF-8 text (byte offset {exc.start})")], path) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        if line is None:
            match = re.search(r"line (\d+)", str(exc))
            line = int(match.group(1)) if match else None
        message = str(exc).split(" (at line")[0]
        raise ConfigError([ConfigIssue("", f"TOML syntax error: {message}", line=line)], path) from None
    return _normalise_sections(data), text


def _normalise_sections(data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for seed_name, name in SEED_SECTIONS.items():
        if seed_name in out and name not in out:
            out[name] = out.pop(seed_name)
    return out


# ------------------------------------------------------------------------------------------------ overrides


def _split_override(text: str) -> tuple[list[str], str]:
    if "=" not in text:
        raise ConfigError([ConfigIssue(text, "an override must look like section.key=value")])
    key, raw_value = text.split("=", 1)
    parts = [part for part in key.strip().split(".") if part]
    if len(parts) < 2:
        raise ConfigError(
            [ConfigIssue(key.strip(), "an override key must name a section and a key, e.g. training.epochs=2")]
        )
    if parts[0] in SEED_SECTIONS:
        parts[0] = SEED_SECTIONS[parts[0]]
    return parts, raw_value.strip()


def _parse_toml_value(raw_value: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw_value}")["v"]
    except tomllib.TOMLDecodeError:
        return raw_value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``training.learning_rate=2e-5`` -> (["training", "learning_rate"], 2e-05).

    The value is read as a TOML value when it parses as one (numbers, booleans, quoted strings, arrays, inline
    tables); otherwise it is taken as a plain string (so ``general.base_model=gpt2`` works unquoted). The seed's
    section spellings (``Training.epochs=2``) are accepted.
    """
    parts, raw_value = _split_override(text)
    return parts, _parse_toml_value(raw_value)


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[str], *, cwd: Path | None = None, stage: str | None = None
) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a raw config dict (a new dict is returned).

    With ``stage`` known, a value meant for a text or path key keeps its literal spelling (``general.seed=3`` is
    the integer 3, but ``general.base_model=123`` is the string "123").
    """
    out = {key: (dict(value) if isinstance(value, dict) else value) for key, value in data.items()}
    for override in overrides:
        parts, raw_value = _split_override(override)
        value = _typed_override_value(parts, raw_value, stage)
        if ".".join(parts) in path_keys() and isinstance(value, str):
            value = str((cwd or Path.cwd()) / Path(value).expanduser())
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[parts[-1]] = value
    return out


def _typed_override_value(parts: list[str], raw_value: str, stage: str | None) -> Any:
    value = _parse_toml_value(raw_value)
    field = field_info(stage, ".".join(parts)) if stage else None
    if field is not None and not isinstance(value, str) and value_type(field.annotation) in (str, Path):
        return raw_value  # a text or path key: "123" stays the string "123"
    return value


def _check_override_keys(parts: list[str], stage: str | None) -> ConfigIssue | None:
    """An issue when an override names a key the stage does not have (with a suggestion), else None."""
    dotted = ".".join(parts)
    stages = [stage] if stage else list(STAGES)
    keys = {key for name in stages for key in known_keys(name)}
    if dotted in keys:
        return None
    parent = ".".join(parts[:-1])
    if len(parts) == 3 and any(is_table_field(name, parent) for name in stages):
        return None  # a sub-key of a table such as training.resources_per_worker.GPU
    message = "unknown key " + FROM_COMMAND_LINE
    other_stages = [name for name in STAGES if name not in stages and dotted in known_keys(name)]
    if other_stages:
        message += f"; it is a setting of the {' and '.join(other_stages)} stage, not '{stage}'"
    else:
        close = difflib.get_close_matches(dotted, sorted(keys), n=1, cutoff=0.6)
        if not close:
            close = [key for key in sorted(keys) if key.endswith("." + parts[-1])][:1]
        if close:
            message += f"; did you mean '{close[0]}'?"
    return ConfigIssue(dotted, message)


def _drop_replaced_exclusive_keys(data: dict[str, Any], overridden: Collection[str]) -> dict[str, Any]:
    """Keys that exclude each other (dataset.validation_file and dataset.validation_split_percentage): overriding
    one on the command line replaces the others set in the file (the command line wins)."""
    out = dict(data)
    for group in exclusive_key_groups():
        if not any(key in overridden for key in group):
            continue
        for key in group:
            section, name = key.split(".")
            node = out.get(section)
            if key not in overridden and isinstance(node, dict) and name in node:
                out[section] = {other: value for other, value in node.items() if other != name}
    return out


# ------------------------------------------------------------------------------------------------ stages


def detect_stage(data: dict[str, Any], requested: str | None) -> str | None:
    """The stage a config is for: the ``stage`` key, else the requested one, else the stage that accepts the most of
    the file's telling keys (those not every stage has, such as ``general.model_name`` for PPO and GRPO, or
    ``training.kl_coeff`` for PPO alone). A tie is no answer (None): the file must say ``stage = ...``."""
    declared = data.get("stage")
    if isinstance(declared, str) and declared in STAGES:
        return declared
    if requested:
        return requested
    present = set(data) | {f"{section}.{key}" for section, table in data.items() if isinstance(table, dict)
                           for key in table}
    accepted = stage_keys()
    telling = present - set.intersection(*(set(keys) for keys in accepted.values()))
    counts = {stage: len(keys & telling) for stage, keys in accepted.items()}
    best = max(counts.values(), default=0)
    leaders = [stage for stage in STAGES if counts[stage] == best]
    return leaders[0] if best and len(leaders) == 1 else None


# ------------------------------------------------------------------------------------------------ loading


def load_config(
    path: Path | str,
    stage: str | None = None,
    overrides: Sequence[str] = (),
    *,
    check_files: bool = True,
) -> StageConfig:
    """Load, override, validate. Raises :class:`ConfigError` listing every problem found."""
    path = Path(path)
    data, text = parse_toml_file(path)
    data = _resolve_relative_paths(data, path.parent)
    override_stage = detect_stage(data, stage)
    issues: list[ConfigIssue] = []
    accepted: list[str] = []
    overridden: set[str] = set()
    for override in overrides:
        try:
            parts, _ = _split_override(override)
        except ConfigError as exc:
            issues += exc.issues
            continue
        issue = _check_override_keys(parts, override_stage)
        if issue is not None:
            issues.append(issue)
            continue
        accepted.append(override)
        overridden.add(".".join(parts))
    data = _drop_replaced_exclusive_keys(data, overridden)
    data = apply_overrides(data, accepted, stage=override_stage)
    return _validate(data, stage=stage, path=path, source_text=text, check_files=check_files,
                     prior_issues=issues, overridden=overridden)


def validate_config_dict(
    data: dict[str, Any],
    *,
    stage: str | None = None,
    path: Path | str | None = None,
    source_text: str = "",
    check_files: bool = True,
) -> StageConfig:
    """Validate an already-parsed config dict (used by load_config, the wizard and migration)."""
    return _validate(data, stage=stage, path=path, source_text=source_text, check_files=check_files)


def _validate(
    data: dict[str, Any],
    *,
    stage: str | None,
    path: Path | str | None,
    source_text: str,
    check_files: bool,
    prior_issues: Sequence[ConfigIssue] = (),
    overridden: Collection[str] = (),
) -> StageConfig:
    data = _normalise_sections(data)
    issues = list(prior_issues)
    declared = data.get("stage")
    if declared is not None and declared not in STAGES:
        issues.append(ConfigIssue("stage", f"expected one of {', '.join(STAGES)}, found {declared!r}", declared,
                                  locate(source_text, ["stage"])))
        raise ConfigError(issues, path)
    if stage and declared and declared != stage:
        issues.append(ConfigIssue("stage", f"this file configures the '{declared}' stage, not '{stage}'",
                                  declared, locate(source_text, ["stage"])))
        raise ConfigError(issues, path)
    detected = detect_stage(data, stage)
    if detected is None:
        choices = ", ".join(f'"{name}"' for name in STAGES)
        issues.append(ConfigIssue("stage", f"cannot tell which stage this config is for: add stage = one of "
                                           f"{choices} at the top of the file (or pass --stage)"))
        raise ConfigError(issues, path)
    model_cls = CONFIG_CLASSES[detected]
    data = {**data, "stage": detected}
    config = None
    try:
        config = model_cls.model_validate(data)
    except ValidationError as exc:
        issues += issues_from_validation(exc, detected, source_text, overridden)
    if check_files:
        flagged = {issue.key for issue in issues}
        issues += [issue for issue in _check_files(data, source_text, overridden) if issue.key not in flagged]
    if issues:
        raise ConfigError(sorted_by_line(issues), path)
    return config  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ helpers


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    out = {key: (dict(value) if isinstance(value, dict) else value) for key, value in data.items()}
    for dotted in sorted(path_keys() | model_source_keys()):
        section, key = dotted.split(".")
        node = out.get(section)
        if not isinstance(node, dict) or not isinstance(node.get(key), str):
            continue
        value = node[key]
        if dotted in model_source_keys() and not value.startswith(("./", "../", "~")):
            continue  # a hub id or an absolute path: used as given
        candidate = Path(value).expanduser()
        if not candidate.is_absolute():
            candidate = (base / candidate).resolve()
        node[key] = str(candidate)
    return out


def _check_files(data: dict[str, Any], text: str, overridden: Collection[str] = ()) -> list[ConfigIssue]:
    """Files and local model folders the config names that do not exist (checked on the raw values, so they are
    reported even when other keys have errors)."""
    issues = []
    for key, must_exist in must_exist_keys().items():
        section, name = key.split(".")
        node = data.get(section)
        value = node.get(name) if isinstance(node, dict) else None
        if not isinstance(value, str) or Path(value).expanduser().exists():
            continue
        if isinstance(must_exist, ModelSource) and not _looks_like_local_path(value):
            continue  # a hub id
        message = f"{must_exist.what} not found: {value}" + (f" ({must_exist.hint})" if must_exist.hint else "")
        if key in overridden:
            issues.append(ConfigIssue(key, f"{message} {FROM_COMMAND_LINE}", value))
        else:
            issues.append(ConfigIssue(key, message, value, locate(text, [section, name])))
    return issues


def _looks_like_local_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or Path(value).exists()


__all__ = [
    "apply_overrides",
    "detect_stage",
    "field_info",
    "known_keys",
    "load_config",
    "parse_override",
    "parse_toml_file",
    "validate_config_dict",
]
