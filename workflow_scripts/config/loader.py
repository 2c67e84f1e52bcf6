"""Resolve a run's config: preset <- config.yaml <- --config overrides, validated against the schema."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from workflow_scripts.config.root import UmmConfig
from workflow_scripts.config.typed import ConfigError, _is_optional, build, coerce, json_schema, suggest

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
        return normalise(data)
    return deep_merge(load_preset(parent), data)


def named_list_paths(tp: Any = UmmConfig, path: tuple[str, ...] = ()) -> frozenset[tuple[str, ...]]:
    """Dotted paths of every list of named things (a list of dataclasses with a ``name`` field), e.g.
    ``pretrain.decoder.phases``: derived from the dataclasses, so a new such list merges by name too."""
    found: set[tuple[str, ...]] = set()
    _, inner = _is_optional(tp)
    if dataclasses.is_dataclass(inner):
        hints = get_type_hints(inner)
        for f in dataclasses.fields(inner):
            found |= named_list_paths(hints[f.name], (*path, f.name))
    elif get_origin(inner) in (list, tuple):
        item = _is_optional(get_args(inner)[0])[1]
        if dataclasses.is_dataclass(item) and "name" in {f.name for f in dataclasses.fields(item)}:
            found.add(path)
    return frozenset(found)


NAMED_LISTS = named_list_paths()
ORDER = "order"  # reserved key of a named mapping: its names in run order


def deep_merge(
    base: Mapping[str, Any], override: Mapping[str, Any], path: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Mappings merge key by key, and so do lists of named things (see :func:`merge_named`); any other
    value (other lists included) replaces the base value."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        where = (*path, key)
        if where in NAMED_LISTS and isinstance(value, Mapping):
            merged[key] = merge_named(merged.get(key), value, ".".join(where))
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value, where)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_named(base: Any, override: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    """Merge ``{name: {...}, order: [names]}`` into a list of named items, item by item.

    A name already in ``base`` merges into that item key by key; a new name is appended (it must then
    state every required key). ``order`` (optional) lists the names in run order and drops any name
    it leaves out. The result is the plain list form the dataclasses, the schema and the stage hashes
    read, so ``phases: {highres: {loop: {steps: 7}}}`` changes one value and nothing else.
    """
    if isinstance(base, Mapping):  # a named mapping that has not been normalised yet
        base = normalise_named(base, key)
    items = [copy.deepcopy(dict(item)) for item in base or []]
    by_name = {item.get("name"): i for i, item in enumerate(items)}
    order = override.get(ORDER)
    for name, value in override.items():
        if name == ORDER:
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"config key '{key}.{name}' must be a mapping of that item's keys, got {value!r}"
            )
        if "name" in value and value["name"] != name:
            raise ConfigError(
                f"config key '{key}.{name}' has name {value['name']!r}; drop it or make them equal"
            )
        if name in by_name:
            items[by_name[name]] = deep_merge(items[by_name[name]], value)
        else:
            by_name[name] = len(items)
            items.append({"name": name, **copy.deepcopy(dict(value))})
    if order is None:
        return items
    if isinstance(order, str) or not isinstance(order, list | tuple):
        raise ConfigError(f"config key '{key}.order' must be a list of names, got {order!r}")
    unknown = [n for n in order if n not in by_name]
    if unknown:
        raise ConfigError(f"config key '{key}.order' names {unknown}, which are not among {list(by_name)}")
    return [items[by_name[n]] for n in order]


def normalise_named(value: Any, key: str) -> Any:
    """A named mapping in its list form; a list (or anything else, for the schema to judge) as it is."""
    if isinstance(value, Mapping):
        return merge_named([], value, key)
    return value


def normalise(data: Mapping[str, Any]) -> dict[str, Any]:
    """Every list of named things in ``data`` in its list form (a preset or config may use either)."""
    out = copy.deepcopy(dict(data))
    for path in NAMED_LISTS:
        node = out
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, dict) and path[-1] in node:
            node[path[-1]] = normalise_named(node[path[-1]], ".".join(path))
    return out


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
    # imported here: a job's processes only parse the resolved config, and jsonschema costs each ~0.1 s
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(config_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        lines = "\n  - ".join(_format_error(e) for e in errors[:10])
        raise ConfigError(f"invalid configuration:\n  - {lines}")


def resolve(user_config: Mapping[str, Any]) -> dict[str, Any]:
    """Merge the chosen preset with the user's keys, coerce CLI strings, validate; return plain data."""
    preset = user_config.get("preset") or "tiny"
    merged = normalise(deep_merge(load_preset(preset), user_config))
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
