"""Self-registration of tuners (node_exporter's collector registry, in Python): the @register decorator and the
table of tuner classes it fills. Every tuner module imports this; registry.py imports every tuner module and
builds the instances the engine drives, so this module imports no tuner and no cycle can form."""

from __future__ import annotations

from agent.tunable.tuner import Tuner

_CLASSES: dict[str, type[Tuner]] = {}


def register(cls: type[Tuner]) -> type[Tuner]:
    """Class decorator: make a tuner known by its `name`. A second class with the same name is a bug."""
    existing = _CLASSES.get(cls.name)
    if existing is not None and existing is not cls:
        raise RuntimeError(f"tuner name {cls.name!r} registered twice ({existing.__module__}, {cls.__module__})")
    _CLASSES[cls.name] = cls
    return cls


def registered() -> dict[str, type[Tuner]]:
    """Every registered tuner class by name (a copy)."""
    return dict(_CLASSES)
