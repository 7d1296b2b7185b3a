"""CPU and NUMA topology: /proc/cpuinfo for the model and ISA flags, sysfs for everything structural.

Topology comes from sysfs (cpuN/topology) rather than cpuinfo because sysfs is what the scheduler uses and it
exists on every architecture; cpuinfo's layout differs per arch and only supplies the model name and flags.
A kernel without NUMA support has no node directories: that host is reported as one node 0 holding every
online CPU and all of memory, so placement code never has to special-case it.
"""

from __future__ import annotations

import re

from agent.fsio import read_int, read_text
from agent.hostfs import HostPaths
from agent.inspect import parse
from agent.inspect.models import CpuFacts, NumaNode
from agent.inspect.registry import register

# ISA extensions that decide which llama.cpp / PyTorch kernels run fast; reported in this order when present.
INFERENCE_FLAGS: tuple[str, ...] = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512dq",
    "avx512cd", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512vbmi", "amx_tile", "amx_bf16", "amx_int8",
    # arm64 ("Features" line)
    "asimd", "asimdhp", "asimddp", "fphp", "i8mm", "bf16", "sve", "sve2",
)

_NODE_DIR_RE = re.compile(r"^node(\d+)$")


def cpuinfo_blocks(paths: HostPaths) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per processor block; lines without a colon are ignored (arch banners)."""
    text = read_text(paths.proc("cpuinfo")) or ""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return [b for b in blocks if "processor" in b] or blocks


def _model(blocks: list[dict[str, str]]) -> tuple[str | None, str | None]:
    for block in blocks:
        model = block.get("model name") or block.get("cpu model") or block.get("Hardware")
        vendor = block.get("vendor_id") or block.get("CPU implementer")
        if model or vendor:
            return model, vendor
    return None, None


def _flags(blocks: list[dict[str, str]]) -> list[str]:
    """Selected flags present on every processor (a flag missing on one CPU cannot be relied on)."""
    sets = [set((b.get("flags") or b.get("Features") or "").split()) for b in blocks]
    sets = [s for s in sets if s]
    if not sets:
        return []
    common = set.intersection(*sets)
    return [f for f in INFERENCE_FLAGS if f in common]


def _package_from_cpuinfo(blocks: list[dict[str, str]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for block in blocks:
        try:
            out[int(block["processor"])] = int(block["physical id"])
        except (KeyError, ValueError):
            continue
    return out


def numa_nodes(paths: HostPaths, online: list[int], memory: dict[str, int] | None) -> list[NumaNode]:
    """One entry per NUMA node; a host without node directories is one node 0 (see module doc)."""
    node_root = paths.sys("devices/system/node")
    ids = parse.read_cpu_list(node_root / "online")  # node lists use the CPU list syntax
    if ids is None:
        ids = sorted(int(m.group(1)) for p in (node_root.iterdir() if node_root.is_dir() else [])
                     if (m := _NODE_DIR_RE.match(p.name)))
    online_set = set(online)
    nodes: list[NumaNode] = []
    for nid in ids:
        nd = node_root / f"node{nid}"
        if not nd.is_dir():
            continue
        cpus = parse.read_cpu_list(nd / "cpulist") or []
        info = parse.meminfo(nd / "meminfo") or {}
        nodes.append(NumaNode(
            id=nid,
            cpus=[c for c in cpus if c in online_set],
            memory_total_bytes=info.get("MemTotal"),
            memory_free_bytes=info.get("MemFree"),
            distances=parse.int_list(nd / "distance") or [],
        ))
    if not nodes:
        memory = memory or {}
        nodes.append(NumaNode(id=0, cpus=list(online), memory_total_bytes=memory.get("MemTotal"),
                              memory_free_bytes=memory.get("MemFree"), distances=[10]))
    return nodes


def _fallback() -> CpuFacts:
    return CpuFacts(sockets=0, cores=0, threads=0, online_cpus=[], smt_siblings=[], numa_nodes=[])


@register("cpu", fallback=_fallback)
def collect(paths: HostPaths) -> CpuFacts:
    blocks = cpuinfo_blocks(paths)
    cpu_root = paths.sys("devices/system/cpu")
    present = parse.read_cpu_list(cpu_root / "present")
    online = parse.read_cpu_list(cpu_root / "online")
    if present is None:
        numbers = sorted(int(b["processor"]) for b in blocks if b.get("processor", "").isdigit())
        present = numbers or (online or [])
    if online is None:
        online = list(present)

    package_of = _package_from_cpuinfo(blocks)
    online_set = set(online)
    packages: set[int] = set()
    groups: set[tuple[int, ...]] = set()
    for cpu in online:
        topo = cpu_root / f"cpu{cpu}" / "topology"
        package = read_int(topo / "physical_package_id")
        if package is None or package < 0:
            package = package_of.get(cpu, 0)
        packages.add(package)
        siblings = parse.read_cpu_list(topo / "thread_siblings_list")
        if siblings is None:
            siblings = parse.read_cpu_list(topo / "core_cpus_list")
        group = tuple(sorted({cpu, *(siblings or [])} & online_set))
        groups.add(group)
    smt_siblings = sorted((list(g) for g in groups), key=lambda g: g[0])

    smt_active_raw = read_int(cpu_root / "smt" / "active")
    smt_active = bool(smt_active_raw) if smt_active_raw is not None else any(len(g) > 1 for g in smt_siblings)

    model, vendor = _model(blocks)
    return CpuFacts(
        model=model,
        vendor=vendor,
        sockets=len(packages) or 1,
        cores=len(smt_siblings),
        threads=len(present),
        online_cpus=online,
        smt_siblings=smt_siblings,
        smt_active=smt_active,
        flags=_flags(blocks),
        numa_nodes=numa_nodes(paths, online, parse.meminfo(paths.proc("meminfo"))),
    )
