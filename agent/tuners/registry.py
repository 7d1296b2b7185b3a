"""The tuners the engine drives: every built-in tuner module, and the instances one operation uses.

Each tuner module decorates its class with @register (registration.py); BUILTIN imports each module once, by
name, so the registry, not a hand-kept list of classes, decides what runs (a new tuner module is one line here).

A TunerSet is made once per engine operation (a plan, an apply, a revert, a verify) and builds each tuner it is
asked for once, with the NVML session the operation's caller handed over (Tuner.build): one instance per tuner
name per operation, and no tuner opens NVML on its own while a session was given.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING

from agent.tunable.tuner import Tuner
from agent.tuners import blockdev, bootargs, cpu, gpu, hugepages, sysctl, thp
from agent.tuners.registration import register, registered

if TYPE_CHECKING:
    from agent.gpu.nvml import Nvml

BUILTIN: tuple[ModuleType, ...] = (sysctl, hugepages, thp, cpu, blockdev, gpu, bootargs)
"""Every tuner module of this package; importing one registers its tuner."""

__all__ = ["BUILTIN", "TunerSet", "get", "register", "tuners"]


def _class(name: str) -> type[Tuner]:
    cls = registered().get(name)
    if cls is None:
        raise KeyError(f"no tuner named {name!r} (journal written by a newer hosttune?)")
    return cls


def _classes(only: Iterable[str] | None) -> list[type[Tuner]]:
    """The enabled tuner classes (or exactly those named in `only`), in apply order."""
    known = registered()
    if only is not None:
        wanted = list(only)
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise KeyError(f"unknown tuner(s): {', '.join(unknown)}")
        classes = [known[n] for n in wanted]
    else:
        classes = [c for c in known.values() if c.enabled_by_default]
    return sorted(classes, key=lambda c: (c.order, c.name))


class TunerSet:
    """The tuners of one engine operation, built on first use and kept: one instance per name, each built with
    the operation's NVML session (None: a tuner that needs NVML opens the real library when it first uses it)."""

    def __init__(self, nvml: Nvml | None = None) -> None:
        self.nvml = nvml
        self._built: dict[str, Tuner] = {}

    def get(self, name: str) -> Tuner:
        """The tuner that owns changes and journal records of `name` (rollback, revert, verify use this)."""
        tuner = self._built.get(name)
        if tuner is None:
            tuner = self._built[name] = _class(name).build(self.nvml)
        return tuner

    def enabled(self, only: Iterable[str] | None = None) -> list[Tuner]:
        """The enabled tuners (or exactly those named in `only`), in apply order."""
        return [self.get(cls.name) for cls in _classes(only)]


def tuners(only: Iterable[str] | None = None, *, nvml: Nvml | None = None) -> list[Tuner]:
    """Instances of the enabled tuners (or exactly those named in `only`), in apply order."""
    return TunerSet(nvml).enabled(only)


def get(name: str, *, nvml: Nvml | None = None) -> Tuner:
    """A fresh instance of the tuner named `name`."""
    return TunerSet(nvml).get(name)
