"""Hugepage pools per page size, globally and per NUMA node, from sysfs.

sysfs rather than meminfo's HugePages_* lines: meminfo only shows the default size, while a host serving
models may also hold 1 GiB pages, and placement needs the per-node split.
"""

from __future__ import annotations

import re

from agent.hostfs import HostPaths
from agent.inspect import parse
from agent.inspect.models import HugepagePool, HugepageSize
from agent.inspect.registry import register

_SIZE_DIR_RE = re.compile(r"^hugepages-(\d+)kB$")
_NODE_DIR_RE = re.compile(r"^node(\d+)$")


def size_name(size_kb: int) -> str:
    """2048 -> '2M', 1048576 -> '1G', 64 -> '64K' (the names policies use)."""
    for unit, factor in (("G", 1024 * 1024), ("M", 1024)):
        if size_kb >= factor and size_kb % factor == 0:
            return f"{size_kb // factor}{unit}"
    return f"{size_kb}K"


def _node_pools(paths: HostPaths, dirname: str) -> dict[str, HugepagePool]:
    node_root = paths.sys("devices/system/node")
    pools: dict[str, HugepagePool] = {}
    if not node_root.is_dir():
        return pools
    nodes = sorted(int(m.group(1)) for p in node_root.iterdir() if (m := _NODE_DIR_RE.match(p.name)))
    for nid in nodes:
        d = node_root / f"node{nid}" / "hugepages" / dirname
        if not d.is_dir():
            continue
        pools[str(nid)] = HugepagePool(
            total=parse.count(d / "nr_hugepages"),
            free=parse.count(d / "free_hugepages"),
            surplus=parse.count(d / "surplus_hugepages"),
        )
    return pools


@register("hugepages", fallback=list)
def collect(paths: HostPaths) -> list[HugepageSize]:
    root = paths.sys("kernel/mm/hugepages")
    if not root.is_dir():
        return []
    sizes = sorted(int(m.group(1)) for p in root.iterdir() if (m := _SIZE_DIR_RE.match(p.name)))
    out: list[HugepageSize] = []
    for size_kb in sizes:
        dirname = f"hugepages-{size_kb}kB"
        d = root / dirname
        overcommit = d / "nr_overcommit_hugepages"
        out.append(HugepageSize(
            size_kb=size_kb,
            name=size_name(size_kb),
            total=parse.count(d / "nr_hugepages"),
            free=parse.count(d / "free_hugepages"),
            reserved=parse.count(d / "resv_hugepages"),
            surplus=parse.count(d / "surplus_hugepages"),
            overcommit=parse.count(overcommit) if overcommit.exists() else None,
            per_node=_node_pools(paths, dirname),
        ))
    return out
