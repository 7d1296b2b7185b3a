"""Memory: /proc/meminfo (bytes) and the memlock limit.

The memlock limit is read from procfs/self/limits: the limit this process runs under, which is what a worker
started by hosttune inherits unless its unit says otherwise (llama-server --mlock fails quietly when it is low).
"""

from __future__ import annotations

import re

from agent.errors import InputError
from agent.fsio import read_text
from agent.hostfs import HostPaths
from agent.inspect import parse
from agent.inspect.models import MemoryFacts
from agent.inspect.registry import register

_LIMIT_RE = re.compile(r"^Max locked memory\s+(\S+)\s+(\S+)")


def mlock_limit_bytes(paths: HostPaths) -> int | None:
    """The soft RLIMIT_MEMLOCK in bytes; None when unlimited or unknown."""
    path = paths.proc("self", "limits")
    text = read_text(path)
    if text is None:
        return None
    for lineno, line in enumerate(text.splitlines(), 1):
        match = _LIMIT_RE.match(line)
        if not match:
            continue
        soft = match.group(1)
        if soft == "unlimited":
            return None
        if not soft.isdigit():
            raise InputError(f"malformed limit {soft!r}", path=path, line=lineno, field="Max locked memory")
        return int(soft)
    return None


def _fallback() -> MemoryFacts:
    return MemoryFacts(total_bytes=0, free_bytes=0)


@register("memory", fallback=_fallback)
def collect(paths: HostPaths) -> MemoryFacts:
    path = paths.proc("meminfo")
    info = parse.meminfo(path)
    if info is None:
        raise InputError("meminfo is missing", path=path)
    for required in ("MemTotal", "MemFree"):
        if required not in info:
            raise InputError(f"no {required} line", path=path, field=required)
    return MemoryFacts(
        total_bytes=info["MemTotal"],
        free_bytes=info["MemFree"],
        available_bytes=info.get("MemAvailable"),
        cached_bytes=info.get("Cached"),
        swap_total_bytes=info.get("SwapTotal"),
        swap_free_bytes=info.get("SwapFree"),
        anon_hugepages_bytes=info.get("AnonHugePages"),
        hugepage_size_bytes=info.get("Hugepagesize"),
        mlock_limit_bytes=mlock_limit_bytes(paths),
    )
