"""Model registry (timm style): networks are built by name, never by importing code from a config.

Adding a network takes one file under ``medattn/models/`` with one decorator line::

    @register_model("my_net")
    class MyNet(nn.Module):
        def __init__(self, *, spatial_dims: int = 3, width: int = 16) -> None: ...

and a config that says ``model: {name: my_net, kwargs: {width: 32}}``. Every public module of the
``medattn.models`` package is imported on the first registry lookup, so no list needs editing.
Constructor keyword arguments are type-checked against the constructor's type hints
(:func:`validate_model_kwargs`) before the model is built.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing
from collections.abc import Callable
from typing import Any

from torch import nn

from medattn.errors import ConfigError

_REGISTRY: dict[str, type[nn.Module]] = {}
_DISCOVERED = False


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers an ``nn.Module`` subclass under ``name``.

    Registering a second class under a taken name raises ``ValueError`` (a programming error).
    """

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"@register_model({name!r}) must decorate an nn.Module subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"model name {name!r} is already registered to {existing.__qualname__}")
        _REGISTRY[name] = cls
        return cls

    return decorator


def _discover() -> None:
    """Import every public module of ``medattn.models`` once, so their decorators run."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    package = importlib.import_module("medattn.models")
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"medattn.models.{info.name}")
    _DISCOVERED = True


def _lookup(name: str) -> type[nn.Module]:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model '{name}' (known: {', '.join(list_models()) or 'none'})") from None


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    _discover()
    return sorted(_REGISTRY)


def _parameters(cls: type[nn.Module]) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in list(params.items())[1:]
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}


def _accepts_any_kwarg(cls: type[nn.Module]) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD
               for p in inspect.signature(cls.__init__).parameters.values())


def model_defaults(name: str) -> dict[str, Any]:
    """Keyword defaults of model ``name``'s constructor, e.g. ``{"spatial_dims": 3, ...}``.

    Parameters without a default are left out. Unknown ``name`` raises :class:`ConfigError`.
    """
    cls = _lookup(name)
    return {k: p.default for k, p in _parameters(cls).items() if p.default is not inspect.Parameter.empty}


def validate_model_kwargs(name: str, kwargs: dict, where: str = "model.kwargs",
                          source: str | None = None) -> dict:
    """Check ``kwargs`` against model ``name``'s constructor and return them coerced.

    Every key must be a constructor parameter, every value must match the parameter's type hint
    (via :func:`medattn.config.coerce_value`; YAML lists become lists, ints are accepted for
    floats), and every parameter without a default must be given. Errors are
    :class:`ConfigError` naming ``f"{where}.{key}"`` and ``source`` (the config file).
    """
    from medattn.config import coerce_value  # lazy: medattn.config may itself import this module

    cls = _lookup(name)
    params = _parameters(cls)
    hints = typing.get_type_hints(cls.__init__)
    open_ended = _accepts_any_kwarg(cls)
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(kwargs).__name__}", source)
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key not in params:
            if open_ended:
                out[key] = value
                continue
            known = ", ".join(params) or "none"
            raise ConfigError(f"{where}.{key}: unknown parameter for model '{name}' (known: {known})", source)
        out[key] = coerce_value(value, hints[key], f"{where}.{key}", source) if key in hints else value
    for key, p in params.items():
        if p.default is inspect.Parameter.empty and key not in out:
            raise ConfigError(f"{where}.{key}: required parameter for model '{name}' is missing", source)
    return out


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build registered model ``name`` with ``kwargs`` (validated by :func:`validate_model_kwargs`).

    Unknown names, unknown or ill-typed kwargs and values the constructor rejects (``ValueError``)
    raise :class:`ConfigError`.
    """
    cls = _lookup(name)
    checked = validate_model_kwargs(name, kwargs)
    try:
        return cls(**checked)
    except ValueError as e:
        raise ConfigError(f"model '{name}': {e}") from e
