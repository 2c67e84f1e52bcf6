"""Typed configuration: frozen dataclasses are the single source of every config key.

Each component owns a dataclass (torchtitan style); the root config composes them. From the same
dataclasses we derive the JSON schema that validates ``config.yaml`` when the DAG loads, so the schema
and the code that reads the values cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A config value is missing, misspelt or of the wrong type; the message names the key."""


def doc(help_text: str, **kwargs: Any) -> Any:
    """A dataclass field with a help text (shown in the JSON schema and in error messages)."""
    return dataclasses.field(metadata={"help": help_text}, **kwargs)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)):
            inner = args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
            return True, inner
    return False, tp


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def json_schema(tp: Any, description: str | None = None) -> dict[str, Any]:
    """JSON schema (draft 2020-12 subset) of a config type."""
    optional, inner = _is_optional(tp)
    if optional:
        schema = {"anyOf": [json_schema(inner), {"type": "null"}]}
    elif dataclasses.is_dataclass(inner):
        hints = _hints(inner)
        props = {}
        for f in dataclasses.fields(inner):
            props[f.name] = json_schema(hints[f.name], f.metadata.get("help"))
        schema = {
            "type": "object",
            "properties": props,
            "required": [f.name for f in dataclasses.fields(inner) if not _has_default(f)],
            "additionalProperties": False,
        }
        if inner.__doc__:
            schema["title"] = inner.__name__
    elif get_origin(inner) is Literal:
        schema = {"enum": list(get_args(inner))}
    elif get_origin(inner) in (list, tuple):
        schema = {"type": "array", "items": json_schema(get_args(inner)[0])}
    elif get_origin(inner) is dict:
        schema = {"type": "object", "additionalProperties": json_schema(get_args(inner)[1])}
    elif get_origin(inner) in (Union, types.UnionType):
        schema = {"anyOf": [json_schema(a) for a in get_args(inner)]}
    elif inner is bool:
        schema = {"type": "boolean"}
    elif inner is int:
        schema = {"type": "integer"}
    elif inner is float:
        schema = {"type": "number"}
    elif inner is str:
        schema = {"type": "string"}
    elif inner is Any:
        schema = {}
    else:
        raise TypeError(f"unsupported config type {inner!r}")
    if description:
        schema["description"] = description
    return schema


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(value: Any, tp: Any) -> Any:
    """Turn strings into the numbers/booleans the type asks for, recursively.

    Snakemake parses nested ``--config key="{a: {b: 1}}"`` values with YAML's BaseLoader, so every
    leaf arrives as a string; PyYAML also reads ``1e-4`` as a string. Anything that does not convert
    is returned unchanged, for the schema to reject with the key's name.
    """
    optional, inner = _is_optional(tp)
    if value is None:
        return None
    if optional and isinstance(value, str) and value.lower() in {"null", "none", "~"}:
        return None
    if dataclasses.is_dataclass(inner) and isinstance(value, Mapping):
        hints = _hints(inner)
        return {k: coerce(v, hints[k]) if k in hints else v for k, v in value.items()}
    origin = get_origin(inner)
    if origin in (list, tuple) and isinstance(value, list):
        return [coerce(v, get_args(inner)[0]) for v in value]
    if origin is dict and isinstance(value, Mapping):
        return {k: coerce(v, get_args(inner)[1]) for k, v in value.items()}
    if isinstance(value, str):
        try:
            if inner is bool:
                if value.lower() in _TRUE:
                    return True
                if value.lower() in _FALSE:
                    return False
            elif inner is int:
                return int(value)
            elif inner is float:
                return float(value)
            elif origin is Literal:
                for choice in get_args(inner):
                    if not isinstance(choice, str) and str(choice) == value:
                        return choice
        except ValueError:
            return value
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def suggest(key: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def build(cls: type, data: Any, path: str = "") -> Any:
    """Build a (nested) frozen dataclass from plain data, failing with the dotted key on any mismatch."""
    return _build(cls, data, path)


def _where(path: str) -> str:
    return f"config key '{path}'" if path else "config"


def _build(tp: Any, value: Any, path: str) -> Any:
    optional, inner = _is_optional(tp)
    if value is None:
        if optional or inner is Any:
            return None
        raise ConfigError(f"{_where(path)} must be set (it is null or missing)")
    if dataclasses.is_dataclass(inner):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{_where(path)} must be a mapping, got {type(value).__name__}")
        hints = _hints(inner)
        names = [f.name for f in dataclasses.fields(inner)]
        for key in value:
            if key not in hints:
                raise ConfigError(
                    f"{_where(_join(path, key))} is not a known key{suggest(key, names)}; "
                    f"allowed under '{path or '<root>'}': {', '.join(names)}"
                )
        fields = {f.name: f for f in dataclasses.fields(inner)}
        missing = [n for n in names if n not in value and not _has_default(fields[n])]
        if missing:
            raise ConfigError(f"{_where(path)} lacks required key(s): {', '.join(missing)}")
        kwargs = {n: _build(hints[n], value[n], _join(path, n)) for n in names if n in value}
        try:
            return inner(**kwargs)
        except ConfigError:
            raise
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{_where(path)}: {err}") from err
    origin = get_origin(inner)
    if origin is Literal:
        if value not in get_args(inner):
            raise ConfigError(f"{_where(path)} = {value!r}; choose one of {list(get_args(inner))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{_where(path)} must be a list, got {type(value).__name__}")
        item = get_args(inner)[0]
        return tuple(_build(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{_where(path)} must be a mapping, got {type(value).__name__}")
        item = get_args(inner)[1]
        return types.MappingProxyType({k: _build(item, v, _join(path, k)) for k, v in value.items()})
    if origin in (Union, types.UnionType):
        for arg in get_args(inner):
            try:
                return _build(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"{_where(path)} = {value!r} matches none of {inner}")
    if inner is Any:
        return value
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if inner in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{_where(path)} must be a number, got a boolean")
    if not isinstance(value, inner):
        raise ConfigError(f"{_where(path)} must be {inner.__name__}, got {type(value).__name__} {value!r}")
    return value


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def to_plain(obj: Any) -> Any:
    """Dataclass tree -> plain JSON-able data (inverse of :func:`build`)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    return obj
