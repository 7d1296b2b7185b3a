"""Self-registration of tuners (node_exporter's collector registry, in Python).

Each tuner module decorates its class with @register; `tuners()` imports every module of the agent.tuners
package once (so a new module such as gpu.py needs no edit anywhere else) and returns one instance of each
enabled tuner in apply order. The registry, not a hand-kept list, decides what runs.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

import agent.tuners as package
from agent.tunable.tuner import Tuner

_REGISTRY: dict[str, type[Tuner]] = {}
_NOT_TUNERS = {"registry"}
_loaded = False


def register(cls: type[Tuner]) -> type[Tuner]:
    """Class decorator: make a tuner known by its `name`. A second class with the same name is a bug."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise RuntimeError(f"tuner name {cls.name!r} registered twice ({existing.__module__}, {cls.__module__})")
    _REGISTRY[cls.name] = cls
    return cls


def load_builtin() -> None:
    """Import every tuner module of the package so that each registers itself."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _NOT_TUNERS and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    _loaded = True


def tuners(only: Iterable[str] | None = None) -> list[Tuner]:
    """Instances of the enabled tuners (or exactly those named in `only`), in apply order."""
    load_builtin()
    if only is not None:
        wanted = list(only)
        unknown = [n for n in wanted if n not in _REGISTRY]
        if unknown:
            raise KeyError(f"unknown tuner(s): {', '.join(unknown)}")
        classes = [_REGISTRY[n] for n in wanted]
    else:
        classes = [c for c in _REGISTRY.values() if c.enabled_by_default]
    return [c() for c in sorted(classes, key=lambda c: (c.order, c.name))]


def get(name: str) -> Tuner:
    """The tuner that owns journal records of `name` (used by rollback and revert)."""
    load_builtin()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise KeyError(f"no tuner named {name!r} (journal written by a newer hosttune?)")
    return cls()


def names() -> list[str]:
    load_builtin()
    return sorted(_REGISTRY)
