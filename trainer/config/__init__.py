"""The spec: schema (TAO depth_net keys and defaults), loading, overrides and validation."""

from trainer.config.loader import (
    build_config,
    load_config,
    build_spec,
    known_key,
    load_spec,
    nearest_key,
    parse_overrides,
    save_spec,
    to_plain,
    with_overrides,
)
from trainer.config.schema import ExperimentConfig, default_spec
from trainer.config.tree import flatten

__all__ = [
    "build_config",
    "load_config",
    "ExperimentConfig",
    "build_spec",
    "default_spec",
    "flatten",
    "known_key",
    "load_spec",
    "nearest_key",
    "parse_overrides",
    "save_spec",
    "to_plain",
    "with_overrides",
]
