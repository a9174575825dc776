"""Typed TOML configuration: schema, loading with overrides, rendering, legacy migration."""

from rlhfctl.config.loader import known_keys, load_config, parse_override, validate_config_dict
from rlhfctl.config.schema import (
    CONFIG_CLASSES,
    STAGES,
    GenerationConfig,
    PPOConfig,
    RMConfig,
    SFTConfig,
    StageConfig,
)

__all__ = [
    "CONFIG_CLASSES",
    "STAGES",
    "GenerationConfig",
    "PPOConfig",
    "RMConfig",
    "SFTConfig",
    "StageConfig",
    "known_keys",
    "load_config",
    "parse_override",
    "validate_config_dict",
]
