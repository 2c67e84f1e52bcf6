"""Resolve a run's config: preset <- config.yaml <- --config overrides, validated against the schema."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from workflow_scripts.config.root import UmmConfig
from workflow_scripts.config.typed import ConfigError, build, coerce, json_schema, suggest

PRESETS = ("tiny", "paper")


@cache
def config_schema() -> dict[str, Any]:
    schema = json_schema(UmmConfig)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "umm-pipeline config"
    return schema


def load_preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"config key 'preset' = {name!r}; choose one of {list(PRESETS)}")
    text = resources.files("workflow_scripts.config").joinpath(f"presets/{name}.yaml").read_text()
    data = yaml.safe_load(text)
    parent = data.pop("inherits", None)
    if parent is None:
        return data
    return deep_merge(load_preset(parent), data)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value (lists included) replaces the base value."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _format_error(error: Any) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    where = f"config key '{path}'" if path else "config"
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        parts = [f"'{'.'.join([path, k]) if path else k}'{suggest(k, allowed)}" for k in extra]
        return (
            f"unknown config key {', '.join(parts)}; allowed under '{path or '<root>'}': {', '.join(allowed)}"
        )
    if error.validator == "required":
        return f"{where}: {error.message}"
    described = error.schema.get("description")
    hint = f" ({described})" if described else ""
    return f"{where}: {error.message}{hint}"


def validate(data: Mapping[str, Any]) -> None:
    validator = Draft202012Validator(config_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        lines = "\n  - ".join(_format_error(e) for e in errors[:10])
        raise ConfigError(f"invalid configuration:\n  - {lines}")


def resolve(user_config: Mapping[str, Any]) -> dict[str, Any]:
    """Merge the chosen preset with the user's keys, coerce CLI strings, validate; return plain data."""
    preset = user_config.get("preset") or "tiny"
    merged = deep_merge(load_preset(preset), user_config)
    merged["preset"] = preset
    merged = coerce(merged, UmmConfig)
    validate(merged)
    build(UmmConfig, merged)  # cross-field checks (__post_init__) with the key in the message
    return merged


def parse(plain: Mapping[str, Any]) -> UmmConfig:
    return build(UmmConfig, plain)


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(data: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:length]
