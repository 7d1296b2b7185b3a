"""The collector registry (node_exporter's idea): each domain module registers one collector for one HostFacts
field, with a fallback value used when that collector breaks. The registry, not a hand-kept list in collect(),
decides what runs; a module only has to be imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.hostfs import HostPaths

T = TypeVar("T")


@dataclass(frozen=True)
class Collector:
    """Reads one HostFacts field from the host. `fallback` builds the value reported when `collect` fails."""

    field: str
    collect: Callable[[HostPaths], Any]
    fallback: Callable[[], Any]
    enabled: bool = True


COLLECTORS: dict[str, Collector] = {}


def register(field: str, fallback: Callable[[], Any],
             enabled: bool = True) -> Callable[[Callable[[HostPaths], T]], Callable[[HostPaths], T]]:
    """Decorator: register `fn(paths) -> value` as the collector of HostFacts.<field>."""

    def wrap(fn: Callable[[HostPaths], T]) -> Callable[[HostPaths], T]:
        if field in COLLECTORS:
            raise ValueError(f"collector for {field!r} registered twice")
        COLLECTORS[field] = Collector(field=field, collect=fn, fallback=fallback, enabled=enabled)
        return fn

    return wrap
