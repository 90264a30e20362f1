"""Strict loading of frozen dataclass configs from JSON.

Every component of lmdm has one frozen dataclass config (STYLE.md habit 1). This module turns a JSON object
into such a dataclass and rejects unknown keys with the list of valid ones, so a typo never silently falls back
to a default (the failure mode STYLE.md notes in stable-audio-tools).
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar
from lmdm.errors import LmdmError

T = TypeVar("T")


class ConfigError(LmdmError, ValueError):
    """A config file or dict that does not describe a valid config (unknown key, wrong type, bad value)."""


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build the frozen dataclass ``cls`` from ``data``.

    Nested dataclass fields are built recursively; tuples are converted from JSON lists.

    Raises:
        ConfigError: ``data`` is not a dict, has keys that ``cls`` does not define (the message lists the valid
            keys), or a value cannot be converted to the field's type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} for {cls.__name__}; valid keys are: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        return tuple(_convert(a, v, where) for a, v in zip(args, value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {value!r}")
        _, vt = typing.get_args(tp)
        return {k: _convert(vt, v, where) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """The JSON-ready dict of a dataclass config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def load_json(cls: type[T], path: str | Path) -> T:
    """Load ``cls`` from a JSON file.

    Raises:
        ConfigError: the file is missing, is not valid JSON, or does not describe ``cls``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    return from_dict(cls, data, where=str(path))


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` that rejects unknown field names with the list of valid ones."""
    fields = {f.name for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} for {type(cfg).__name__}; valid keys are: {', '.join(sorted(fields))}")
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]
