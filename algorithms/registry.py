"""Algorithms by name, timm-style: ``@register("maml")`` on the class, ``available()`` lists the
names, ``create(name, model, **hparams)`` builds one."""

from __future__ import annotations

import inspect

from algorithms.base import Algorithm
from algorithms.models import Model

_REGISTRY: dict[str, type[Algorithm]] = {}


def register(name: str):
    """Class decorator: make ``cls`` available as ``name`` (and set ``cls.name``)."""

    def decorate(cls: type[Algorithm]) -> type[Algorithm]:
        if name in _REGISTRY:
            raise ValueError(f"algorithm {name!r} is already registered (by {_REGISTRY[name].__qualname__})")
        if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
            raise TypeError(f"@register({name!r}) needs an Algorithm subclass, got {cls!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available() -> list[str]:
    """The registered algorithm names, sorted."""
    return sorted(_REGISTRY)


def hyperparameters(name: str) -> list[str]:
    """The hyper-parameter names ``create`` accepts for algorithm ``name`` (those of its class and
    the classes it builds on), the shared ones first."""
    names: list[str] = []
    for cls in reversed(_lookup(name).__mro__):
        if "__init__" not in vars(cls) or cls is object:
            continue
        for param in list(inspect.signature(cls.__init__).parameters.values())[2:]:  # after self, model
            if param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL) and param.name not in names:
                names.append(param.name)
    return names


def create(name: str, model: Model, **hparams) -> Algorithm:
    """Build algorithm ``name`` for ``model``; unknown names and hyper-parameters are a ValueError."""
    cls = _lookup(name)
    valid = hyperparameters(name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise ValueError(f"algorithm {name!r}: unknown hyper-parameter(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return cls(model, **hparams)


def _lookup(name: str) -> type[Algorithm]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]
