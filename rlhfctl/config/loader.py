"""TOML -> validated stage config, collecting every problem before failing once.

``load_config(path, stage=None, overrides=())`` is the only way the rest of rlhfctl reads a config file.
Relative paths inside the file are resolved against the file's folder; relative paths given as command-line
overrides against the current directory.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from rlhfctl.config.schema import CONFIG_CLASSES, STAGES, StageConfig
from rlhfctl.errors import ConfigError, ConfigIssue

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

_PATH_KEYS = {
    ("dataset", "train_file"),
    ("dataset", "validation_file"),
    ("general", "output_dir"),
    ("general", "checkpoint_dir"),
    ("general", "model_pretrain"),
    ("general", "rm_pretrain"),
}
_MODEL_KEYS = {("general", "base_model"), ("general", "model_name"), ("general", "rm_name")}
_SEED_SECTIONS = {"General": "general", "Dataset": "dataset", "Training": "training", "Generation": "generation"}


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
    for seed_name, name in _SEED_SECTIONS.items():
        if seed_name in out and name not in out:
            out[name] = out.pop(seed_name)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``training.learning_rate=2e-5`` -> (["training", "learning_rate"], 2e-05).

    The value is read as a TOML value when it parses as one (numbers, booleans, quoted strings, arrays, inline
    tables); otherwise it is taken as a plain string (so ``general.base_model=gpt2`` works unquoted).
    """
    if "=" not in text:
        raise ConfigError([ConfigIssue(text, "an override must look like section.key=value")])
    key, raw_value = text.split("=", 1)
    key = key.strip()
    parts = [part for part in key.split(".") if part]
    if len(parts) < 2:
        raise ConfigError([ConfigIssue(key, "an override key must name a section and a key, e.g. training.epochs=2")])
    raw_value = raw_value.strip()
    try:
        value = tomllib.loads(f"v = {raw_value}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw_value
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], *, cwd: Path | None = None) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a raw config dict (a new dict is returned)."""
    out = {key: (dict(value) if isinstance(value, dict) else value) for key, value in data.items()}
    for override in overrides:
        parts, value = parse_override(override)
        if parts[0] in _SEED_SECTIONS:
            parts[0] = _SEED_SECTIONS[parts[0]]
        if tuple(parts) in _PATH_KEYS and isinstance(value, str):
            value = str((cwd or Path.cwd()) / Path(value).expanduser())
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return out


def detect_stage(data: dict[str, Any], requested: str | None) -> str | None:
    """The stage a config is for: the ``stage`` key, else the requested one, else inferred from PPO-only keys."""
    declared = data.get("stage")
    if isinstance(declared, str) and declared in STAGES:
        return declared
    if requested:
        return requested
    general = data.get("general") if isinstance(data.get("general"), dict) else {}
    if "model_name" in general or "rm_name" in general or "generation" in data:
        return "ppo"
    training = data.get("training") if isinstance(data.get("training"), dict) else {}
    if "completion_only_loss" in training:
        return "sft"
    if "center_rewards_coefficient" in training:
        return "rm"
    return None


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
    data = apply_overrides(data, overrides)
    return validate_config_dict(data, stage=stage, path=path, source_text=text, check_files=check_files)


def validate_config_dict(
    data: dict[str, Any],
    *,
    stage: str | None = None,
    path: Path | str | None = None,
    source_text: str = "",
    check_files: bool = True,
) -> StageConfig:
    """Validate an already-parsed config dict (used by load_config, the wizard and migration)."""
    data = _normalise_sections(data)
    detected = detect_stage(data, stage)
    declared = data.get("stage")
    issues: list[ConfigIssue] = []
    if declared is not None and declared not in STAGES:
        issues.append(ConfigIssue("stage", f"expected one of {', '.join(STAGES)}, found {declared!r}", declared,
                                  _locate(source_text, ["stage"])))
        raise ConfigError(issues, path)
    if stage and declared and declared != stage:
        raise ConfigError(
            [ConfigIssue("stage", f"this file configures the '{declared}' stage, not '{stage}'", declared,
                         _locate(source_text, ["stage"]))],
            path,
        )
    if detected is None:
        raise ConfigError(
            [ConfigIssue("stage", "cannot tell which stage this config is for: add stage = \"sft\", \"rm\" or "
                                  "\"ppo\" at the top of the file (or pass --stage)")],
            path,
        )
    model_cls = CONFIG_CLASSES[detected]
    data = {**data, "stage": detected}
    try:
        config = model_cls.model_validate(data)
    except ValidationError as exc:
        issues.extend(_issues_from_validation(exc, model_cls, source_text))
        raise ConfigError(issues, path) from None
    if check_files:
        issues.extend(_check_files(config, source_text))
    if issues:
        raise ConfigError(issues, path)
    return config  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ helpers


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    out = {key: (dict(value) if isinstance(value, dict) else value) for key, value in data.items()}
    for section, key in _PATH_KEYS | _MODEL_KEYS:
        node = out.get(section)
        if not isinstance(node, dict) or not isinstance(node.get(key), str):
            continue
        value = node[key]
        if (section, key) in _MODEL_KEYS and not value.startswith(("./", "../", "~")):
            continue  # a hub id or an absolute path: used as given
        candidate = Path(value).expanduser()
        if not candidate.is_absolute():
            candidate = (base / candidate).resolve()
        node[key] = str(candidate)
    return out


def _issues_from_validation(exc: ValidationError, model_cls: type[BaseModel], text: str) -> list[ConfigIssue]:
    issues = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"] if not isinstance(part, int) or True]
        key = ".".join(loc)
        found = error.get("input")
        kind = error["type"]
        if kind == "extra_forbidden":
            suggestion = _suggest(model_cls, loc)
            message = "unknown key" + (f"; did you mean '{suggestion}'?" if suggestion else "")
        elif kind == "missing":
            message = "required key is missing"
            found = None
        elif kind == "literal_error":
            expected = error.get("ctx", {}).get("expected", "")
            message = f"expected one of {expected}, found {found!r}"
        else:
            message = error["msg"].removeprefix("Value error, ")
            if found is not None and not isinstance(found, dict):
                message = f"{message} (found {found!r})"
        issues.append(ConfigIssue(key, message, found, _locate(text, loc)))
    return issues


def _suggest(model_cls: type[BaseModel], loc: list[str]) -> str | None:
    """A close known key for an unknown one, searched in the section the unknown key sits in."""
    node: type[BaseModel] | None = model_cls
    for part in loc[:-1]:
        field = node.model_fields.get(part) if node else None
        annotation = getattr(field, "annotation", None)
        node = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if node is None:
        return None
    names = list(node.model_fields)
    match = difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.6)
    if match:
        return ".".join([*loc[:-1], match[0]])
    # the key may belong to another section
    for section_name, field in model_cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and loc[-1] in annotation.model_fields:
            return f"{section_name}.{loc[-1]}"
    return None


def _locate(text: str, loc: list[str]) -> int | None:
    """Best-effort 1-based line of a dotted key in TOML text (``[section]`` headers and ``key =`` lines)."""
    if not text or not loc:
        return None
    section_aliases = {v: k for k, v in _SEED_SECTIONS.items()}
    want_section = loc[0] if len(loc) > 1 else ""
    key = loc[1] if len(loc) > 1 else loc[0]
    current = ""
    section_line = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([A-Za-z0-9_.\-]+)\s*\]", stripped)
        if header:
            current = header.group(1)
            if current in (want_section, section_aliases.get(want_section)):
                section_line = number
            continue
        if current in (want_section, section_aliases.get(want_section)) and re.match(
            rf"^{re.escape(key)}\s*=", stripped
        ):
            return number
    return section_line


def _check_files(config: StageConfig, text: str) -> list[ConfigIssue]:
    issues = []
    dataset = config.dataset
    for name in ("train_file", "validation_file"):
        value = getattr(dataset, name)
        if value is not None and not Path(value).exists():
            issues.append(ConfigIssue(f"dataset.{name}", f"file not found: {value}", str(value),
                                      _locate(text, ["dataset", name])))
    general = config.general
    for name in ("base_model", "model_name", "rm_name"):
        value = getattr(general, name, None)
        if isinstance(value, str) and _looks_like_local_path(value) and not Path(value).expanduser().exists():
            issues.append(ConfigIssue(f"general.{name}", f"local model folder not found: {value}", value,
                                      _locate(text, ["general", name])))
    for name in ("model_pretrain", "rm_pretrain"):
        value = getattr(general, name, None)
        if value is not None and not Path(value).exists():
            issues.append(ConfigIssue(
                f"general.{name}",
                f"export folder not found: {value} (run the earlier stage first, or leave the key out)",
                str(value), _locate(text, ["general", name])))
    return issues


def _looks_like_local_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or Path(value).exists()


def known_keys(stage: str) -> list[str]:
    """Every dotted key a stage's config accepts (for docs, the wizard and override suggestions)."""
    model_cls = CONFIG_CLASSES[stage]
    keys = []
    for section, field in model_cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += [f"{section}.{name}" for name in annotation.model_fields]
        else:
            keys.append(section)
    return keys
