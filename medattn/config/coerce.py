"""Type checking of config values against type hints, with errors that name the key.

Supported annotations: ``int``, ``float`` (ints accepted), ``bool``, ``str``, ``Any``, ``Literal[...]``,
``Optional[X]`` / ``X | None``, unions of those, ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``,
``Sequence[X]``, ``dict[str, X]`` and nested config dataclasses.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Literal, Union

from medattn.errors import ConfigError

_NONE = type(None)
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return "any value"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if annotation is _NONE:
        return "null"
    if origin in (list, tuple, collections.abc.Sequence):
        return "a list"
    if origin in (dict, collections.abc.Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(annotation):
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def _fail(key: str, annotation: Any, value: Any, source: str | None) -> typing.NoReturn:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    raise ConfigError(f"{key}: expected {_describe(annotation)}, got {shown}", source)


def coerce_value(value: Any, annotation: Any, key: str, source: str | None = None) -> Any:
    """Check ``value`` against ``annotation`` and return it in canonical form.

    Lists stay lists (tuples from YAML become lists), ints are accepted for floats, and a mapping is
    turned into the dataclass it annotates. Raises :class:`ConfigError` naming ``key`` otherwise.
    """
    if isinstance(annotation, str):
        raise TypeError(f"unresolved annotation {annotation!r} for {key}")
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if annotation is _NONE:
        if value is None:
            return None
        _fail(key, annotation, value, source)
    if origin in (Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        for option in (a for a in args if a is not _NONE):
            try:
                return coerce_value(value, option, key, source)
            except ConfigError:
                continue
        _fail(key, annotation, value, source)
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        _fail(key, annotation, value, source)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        _fail(key, annotation, value, source)
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        _fail(key, annotation, value, source)
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads "1e-4" as a string
        _fail(key, annotation, value, source)
    if annotation is str:
        if isinstance(value, str):
            return value
        _fail(key, annotation, value, source)
    if origin in (list, collections.abc.Sequence) or annotation in (list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            _fail(key, annotation, value, source)
        item = args[0] if args else Any
        return [coerce_value(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is tuple or annotation is tuple:
        if not isinstance(value, (list, tuple)):
            _fail(key, annotation, value, source)
        if len(args) == 2 and args[1] is Ellipsis:
            return [coerce_value(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
        if args and len(args) != len(value):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {len(value)}", source)
        types_ = args or (Any,) * len(value)
        return [coerce_value(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, types_))]
    if origin in (dict, collections.abc.Mapping) or annotation is dict:
        if not isinstance(value, dict):
            _fail(key, annotation, value, source)
        kt, vt = args if args else (Any, Any)
        return {coerce_value(k, kt, f"{key}", source): coerce_value(v, vt, f"{key}.{k}", source)
                for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            _fail(key, annotation, value, source)
        return build_dataclass(annotation, value, key, source)
    if isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        _fail(key, annotation, value, source)
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


def unknown_key_error(key: str, known: typing.Iterable[str], source: str | None) -> ConfigError:
    """A ConfigError for an unknown key, with a "did you mean" hint when one is close."""
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(known))})"
    return ConfigError(f"{key}: unknown key{hint}", source)


def build_dataclass(cls: type, data: dict, prefix: str, source: str | None) -> Any:
    """Build dataclass ``cls`` from ``data``, checking every key and value type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for k, v in data.items():
        full = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            raise unknown_key_error(full, fields, source)
        kwargs[k] = coerce_value(v, hints[k], full, source)
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{prefix or 'config'}: {e}", source) from e
    return obj
