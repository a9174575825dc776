"""Stage config -> TOML text (for ``config show`` and the resolved config written into each run)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from rlhfctl.config.schema import StageConfig


def config_to_dict(config: StageConfig) -> dict:
    """Plain, TOML-ready dict: paths as strings, unset optional keys left out (TOML has no null); ``stage`` first,
    then the sections in file order (:meth:`StageConfigBase.sections`)."""
    data = config.model_dump(mode="json", exclude_none=True)
    for name in type(config).sections():
        section = getattr(config, name, None)
        if name in data and section is not None:
            _drop_exclusive_partners(section, data[name])
    return {"stage": data.pop("stage"), **{name: data.pop(name) for name in type(config).sections() if name in data},
            **data}


def _drop_exclusive_partners(section: Any, values: dict[str, Any]) -> None:
    """Of two mutually exclusive keys (e.g. ``validation_file`` / ``validation_split_percentage``), a set first key
    drops its partner's default, so the written TOML loads again."""
    for first, second in getattr(section, "exclusive_keys", ()):
        if first in values and second not in section.model_fields_set:
            values.pop(second, None)


def dotted_values(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config dict as ``{"training.learning_rate": 1e-05, ...}`` (a table key such as
    ``training.resources_per_worker`` keeps its table as the value)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and key != "resources_per_worker":
            flat.update(dotted_values(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_to_toml(config: StageConfig) -> str:
    data = config_to_dict(config)
    stage = data.pop("stage")
    return tomli_w.dumps({"stage": stage, **data})


def write_resolved_config(config: StageConfig, output_dir: Path) -> Path:
    """Write ``output_dir/resolved_config.toml`` atomically and return its path."""
    from rlhfctl.fileio import atomic_write_text
    from rlhfctl.runfiles import RESOLVED_CONFIG_FILE

    target = Path(output_dir) / RESOLVED_CONFIG_FILE
    atomic_write_text(target, config_to_toml(config))
    return target
