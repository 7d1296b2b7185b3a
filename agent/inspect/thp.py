"""Transparent hugepages: the active mode and the kernel's choices for `enabled` and `defrag`.

A kernel built without THP has no transparent_hugepage directory: available false, which tuners treat as
"not applicable".
"""

from __future__ import annotations

from agent.fsio import read_int
from agent.hostfs import HostPaths
from agent.inspect import parse
from agent.inspect.models import ThpFacts
from agent.inspect.registry import register


def _fallback() -> ThpFacts:
    return ThpFacts(available=False)


@register("thp", fallback=_fallback)
def collect(paths: HostPaths) -> ThpFacts:
    root = paths.sys("kernel/mm/transparent_hugepage")
    enabled, enabled_choices = parse.choice(root / "enabled")
    if enabled is None and not enabled_choices:
        return ThpFacts(available=False)
    defrag, defrag_choices = parse.choice(root / "defrag")
    return ThpFacts(
        available=True,
        enabled=enabled,
        enabled_choices=enabled_choices,
        defrag=defrag,
        defrag_choices=defrag_choices,
        khugepaged_defrag=read_int(root / "khugepaged" / "defrag"),
    )
