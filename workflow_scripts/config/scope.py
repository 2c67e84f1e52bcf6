"""A stage's view as config paths, and the read guard that hands an entry point only that view.

A view function (``catalog.py``) reads the resolved plain config and returns the values its stage
depends on. :func:`trace` runs it over a recording wrapper, so the paths it covers are exactly what it
read, conditional parts included only when taken: every leaf it read, every subtree it put into the
view whole, and the key sets it iterated (whose values stay closed unless read). :class:`Guard` wraps
the typed config with those paths: inside them reads return the real values, an ancestor of a covered
path is a further guard, and any other read raises :class:`OutsideView`, naming the path to add. Every
job runs its entry point under the guard (``launch/job.py``), so a value a stage reads but its view
(and so its hash) misses fails the job instead of silently not re-running it when edited.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

Path = tuple[str | int, ...]

# Where a run's outputs live, not what they contain: readable by every stage (a different value is a
# different run directory, so nothing is reused across it anyway).
EVERYWHERE: tuple[Path, ...] = (("results_root",), ("run_name",))


def dotted(path: Path) -> str:
    return ".".join(str(p) for p in path)


@dataclasses.dataclass(frozen=True)
class Scope:
    """The paths a view covers: ``whole`` subtrees readable in full, ``keys``: containers whose key
    set (iteration, length, membership) the view read."""

    whole: frozenset[Path]
    keys: frozenset[Path]

    def __post_init__(self) -> None:
        ancestors = {c[:n] for c in self.whole for n in range(1, len(c))} | set(self.keys)
        object.__setattr__(self, "_ancestors", frozenset(ancestors))
        object.__setattr__(self, "_readable", self.whole | frozenset(EVERYWHERE))

    def covers(self, path: Path) -> bool:
        return any(path[:n] in self._readable for n in range(1, len(path) + 1))

    def leads_to(self, path: Path) -> bool:
        """Whether ``path`` is an ancestor of something covered (or a container whose keys were read)."""
        return path in self._ancestors

    def paths(self) -> list[str]:
        return sorted(dotted(p) for p in self.whole)


# --- tracing a view function -------------------------------------------------------------------


class _Reads:
    def __init__(self) -> None:
        self.whole: set[Path] = set()
        self.keys: set[Path] = set()

    def wrap(self, value: Any, path: Path) -> Any:
        if isinstance(value, Mapping):
            return _TracedMap(value, path, self)
        if isinstance(value, list | tuple):
            return _TracedList(value, path, self)
        self.whole.add(path)
        return value

    def unwrap(self, value: Any) -> Any:
        """The view's plain value; a traced container put into it whole is covered whole."""
        if isinstance(value, _TracedMap | _TracedList):
            self.whole.add(value._path)
            return value._data
        if isinstance(value, Mapping):
            return {k: self.unwrap(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.unwrap(v) for v in value)
        return value


class _TracedMap(Mapping):
    def __init__(self, data: Mapping, path: Path, reads: _Reads) -> None:
        self._data, self._path, self._reads = data, path, reads

    def __getitem__(self, key: str) -> Any:
        return self._reads.wrap(self._data[key], (*self._path, key))

    def __iter__(self) -> Iterator[str]:
        self._reads.keys.add(self._path)
        return iter(self._data)

    def __len__(self) -> int:
        self._reads.keys.add(self._path)
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        self._reads.keys.add(self._path)
        return key in self._data


class _TracedList(Sequence):
    def __init__(self, data: Sequence, path: Path, reads: _Reads) -> None:
        self._data, self._path, self._reads = data, path, reads

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            self._reads.keys.add(self._path)
            return [self[i] for i in range(len(self._data))[index]]
        return self._reads.wrap(self._data[index], (*self._path, index % len(self._data)))

    def __len__(self) -> int:
        self._reads.keys.add(self._path)
        return len(self._data)

    def __iter__(self) -> Iterator[Any]:
        self._reads.keys.add(self._path)
        return (self[i] for i in range(len(self._data)))


def trace(
    view: Callable[..., dict[str, Any]], plain: Mapping[str, Any], **wildcards: str
) -> tuple[dict, Scope]:
    """Run a view function over ``plain``: its value (the same as a plain call) and the paths it read."""
    reads = _Reads()
    value = reads.unwrap(view(_TracedMap(plain, (), reads), **wildcards))
    return value, Scope(frozenset(reads.whole), frozenset(reads.keys))


# --- the read guard ----------------------------------------------------------------------------


class OutsideView(RuntimeError):
    """A stage read a config value its view does not cover."""


class Guard:
    """The typed config (or a part of it) as a stage may read it: covered values are real, ancestors of
    covered paths are further guards, anything else raises :class:`OutsideView`."""

    __slots__ = ("_obj", "_path", "_scope", "_stage")

    def __init__(self, obj: Any, scope: Scope, stage: str, path: Path = ()) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_scope", scope)
        object.__setattr__(self, "_stage", stage)

    def _child(self, value: Any, key: str | int) -> Any:
        path = (*self._path, key)
        if self._scope.covers(path):
            return value
        if self._scope.leads_to(path):
            return Guard(value, self._scope, self._stage, path)
        raise self._outside(path)

    def _outside(self, path: Path, what: str = "") -> OutsideView:
        name = dotted(path)
        return OutsideView(
            f"stage {self._stage} read cfg.{name}{what} outside its view; add '{name}' to its view in "
            "workflow_scripts/catalog.py (its view covers: "
            f"{', '.join(self._scope.paths()) or 'nothing'})"
        )

    def _keys(self) -> None:
        if self._path not in self._scope.keys:
            raise self._outside(self._path, " (its keys)")

    def __getattr__(self, name: str) -> Any:
        obj = self._obj
        if name.startswith("__") or not hasattr(obj, name):  # copy/pickle protocol lookups, typos
            raise AttributeError(
                f"{type(obj).__name__} at cfg.{dotted(self._path)} has no attribute {name!r}"
            )
        if dataclasses.is_dataclass(obj) and name in {f.name for f in dataclasses.fields(obj)}:
            return self._child(getattr(obj, name), name)
        attr = getattr(type(obj), name, None)
        if isinstance(attr, property):  # a derived value reads its fields through the guard
            return attr.fget(self)
        if isinstance(attr, types.FunctionType):  # so does a method
            return types.MethodType(attr, self)
        if isinstance(obj, Mapping) and name in ("items", "keys", "values", "get"):
            return {"items": self._items, "keys": self._key_list, "values": self._values, "get": self._get}[
                name
            ]
        raise self._outside((*self._path, name))

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field '{name}'")

    def __getitem__(self, key: Any) -> Any:
        obj = self._obj
        if isinstance(key, slice):
            self._keys()
            return [self[i] for i in range(len(obj))[key]]
        if isinstance(obj, Sequence) and isinstance(key, int):
            return self._child(obj[key], key % len(obj))
        return self._child(obj[key], key)

    def __iter__(self) -> Iterator[Any]:
        self._keys()
        if isinstance(self._obj, Mapping):
            return iter(self._obj)
        return iter([self[i] for i in range(len(self._obj))])

    def __len__(self) -> int:
        self._keys()
        return len(self._obj)

    def __contains__(self, key: object) -> bool:
        self._keys()
        return key in self._obj

    def _items(self):
        return [(k, self[k]) for k in self]

    def _key_list(self):
        return list(self)

    def _values(self):
        return [self[k] for k in self]

    def _get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __repr__(self) -> str:
        return f"Guard(stage={self._stage}, at=cfg.{dotted(self._path) or '<root>'})"
