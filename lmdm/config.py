"""Strict loading of frozen dataclass configs from JSON.

Every component of lmdm has one frozen dataclass config (STYLE.md habit 1). This module turns a JSON object
into such a dataclass with `dacite <https://github.com/konradhalas/dacite>`_ in strict mode: unknown keys are
rejected with the list of valid ones (so a typo never silently falls back to a default, the failure mode STYLE.md
notes in stable-audio-tools), every value is type-checked, and a JSON list becomes a tuple only if it has the
tuple's length. The few JSON-specific rules dacite leaves open are type hooks below: a JSON integer is
accepted for a ``float`` field (and stored as a float), ``true``/``false`` are not numbers, and a tuple or dict
field takes only a JSON list or object.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

import dacite

from lmdm.errors import LmdmError

T = TypeVar("T")


class ConfigError(LmdmError, ValueError):
    """A config file or dict that does not describe a valid config (unknown key, wrong type, bad value)."""


def _number(tp: type) -> typing.Callable[[Any], Any]:
    def hook(value: Any) -> Any:
        if isinstance(value, bool):  # bool is an int subclass in Python, but ``true`` is not a number in JSON
            raise dacite.WrongTypeError(field_type=tp, value=value)
        if tp is float and isinstance(value, int):
            return float(value)
        return value

    return hook


def _json_container(tp: Any) -> typing.Callable[[Any], Any]:
    """A ``tuple[...]`` field takes a JSON list (of the tuple's length, unless ``tuple[X, ...]``), a ``dict[...]``
    field a JSON object; dacite alone would turn a string into a tuple of characters."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def hook(value: Any) -> Any:
        if origin is dict and not isinstance(value, dict):
            raise dacite.WrongTypeError(field_type=tp, value=value)
        if origin is tuple:
            fixed = not (len(args) == 2 and args[1] is Ellipsis)
            if not isinstance(value, (list, tuple)) or (fixed and len(value) != len(args)):
                raise dacite.WrongTypeError(field_type=tp, value=value)
        return value

    return hook


def _dacite_config(hints: dict[str, Any]) -> dacite.Config:
    containers = {tp: _json_container(tp) for tp in hints.values() if typing.get_origin(tp) in (tuple, dict)}
    return dacite.Config(strict=True, cast=[tuple],
                         type_hooks={float: _number(float), int: _number(int), **containers})


def _nested_dataclass(tp: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), else None."""
    candidates = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return candidates[0] if len(candidates) == 1 and dataclasses.is_dataclass(candidates[0]) else None


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build the frozen dataclass ``cls`` from the JSON object ``data``.

    Args:
        cls: a dataclass whose fields are JSON-typed (``int``, ``float``, ``bool``, ``str``, ``X | None``,
            ``tuple[...]``, ``dict[str, ...]``) or nested dataclasses (built recursively, errors named
            ``where.field``).
        data: the parsed JSON object; keys not given keep the dataclass defaults.
        where: what to call ``data`` in error messages (a file path, ``path:model`` ...).

    Returns:
        the ``cls`` instance. JSON lists become tuples, JSON integers in ``float`` fields become floats.

    Raises:
        ConfigError: ``data`` is not a dict; it has keys ``cls`` does not define (the message lists the valid
            keys); a value has the wrong type (the message names the field), including a list whose length
            differs from a fixed-length tuple's; or ``cls.__post_init__`` rejects the values (ValueError).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    data = dict(data)
    for name, value in data.items():  # nested configs first, so that their errors name their own keys
        sub = _nested_dataclass(hints.get(name))
        if sub is not None and value is not None:
            data[name] = from_dict(sub, value, f"{where}.{name}")
    try:
        return dacite.from_dict(cls, data, config=_dacite_config(hints))
    except dacite.UnexpectedDataError as e:
        valid = ", ".join(f.name for f in dataclasses.fields(cls) if f.init)  # type: ignore[arg-type]
        raise ConfigError(f"{where}: unknown key(s) {sorted(e.keys)} for {cls.__name__}; valid keys are: "
                          f"{valid}") from None
    except dacite.WrongTypeError as e:
        got = list(e.value) if isinstance(e.value, tuple) else e.value  # shown as the JSON list it came from
        raise ConfigError(f"{where}.{e.field_path}: expected {_type_name(e.field_type)}, got {got!r}") from None
    except dacite.DaciteError as e:
        raise ConfigError(f"{where}: {e}") from None
    except ValueError as e:  # __post_init__ checks (ConfigError included: they gain the place)
        raise ConfigError(f"{where}: {e}") from e


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else str(tp).replace("typing.", "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The JSON-ready dict of a dataclass config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def read_json(path: str | Path, error: type[Exception] = ConfigError, what: str = "config file") -> Any:
    """The parsed content of a JSON file a user gave.

    Raises:
        error: the file is missing or is not valid JSON (the message names ``what`` and the path).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON ({e})") from e


def load_json(cls: type[T], path: str | Path) -> T:
    """Load ``cls`` from a JSON file.

    Raises:
        ConfigError: the file is missing, is not valid JSON, or does not describe ``cls`` (see :func:`from_dict`).
    """
    return from_dict(cls, read_json(path), where=str(path))


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` that rejects unknown field names with the list of valid ones.

    Raises:
        ConfigError: a name in ``changes`` is not a field of ``cfg``.
    """
    fields = [f.name for f in dataclasses.fields(cfg)]  # type: ignore[arg-type]
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} for {type(cfg).__name__}; valid keys are: {', '.join(fields)}")
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]
