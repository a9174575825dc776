"""Typed TOML configuration: schema, loading with overrides, rendering, legacy migration.

The names below are loaded on first use (PEP 562), so importing one light submodule (e.g. ``templates``) does not
pull in the whole loader, and ``rlhfctl --help`` does not pay for pydantic.
"""

from __future__ import annotations

from typing import Any

_LOADER_NAMES = ("known_keys", "load_config", "parse_override", "validate_config_dict")
_SCHEMA_NAMES = ("CONFIG_CLASSES", "STAGES", "DPOConfig", "GRPOConfig", "GenerationConfig", "PPOConfig", "RMConfig",
                 "SFTConfig", "StageConfig")

__all__ = sorted(_LOADER_NAMES + _SCHEMA_NAMES)


def __getattr__(name: str) -> Any:
    if name in _LOADER_NAMES:
        from rlhfctl.config import loader

        return getattr(loader, name)
    if name in _SCHEMA_NAMES:
        from rlhfctl.config import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'rlhfctl.config' has no attribute {name!r}")
