"""Where the worker runs: which NUMA node, which CPUs, how many threads — and why.

A pure function of the host facts, the worker spec and (for `auto`) where the model file lives. `auto` follows the
data the worker touches most: the GPU it offloads to (its PCI device's NUMA node), else the disk the model is read
from, else the node with the most free memory. Threads default to the chosen CPUs' physical cores: llama.cpp's
matrix kernels gain nothing from SMT siblings and lose to their contention.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agent.errors import InputError
from agent.fsio import format_cpu_list
from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts, NumaNode
from agent.policy.model import WorkerSpec


class Placement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: int | None = Field(description="NUMA node the worker is bound to; None when not bound to one node")
    cpus: list[int]
    threads: int = Field(description="suggested -t: physical cores among cpus")
    membind: bool = Field(description="bind memory allocations to `node`")
    gpu: int | None = Field(None, description="GPU index the worker uses, when it offloads")
    gpu_uuid: str | None = None
    reasons: list[str] = Field(default_factory=list)

    @property
    def bound(self) -> bool:
        return self.membind or bool(self.cpus)

    def summary(self) -> str:
        where = f"node {self.node}" if self.node is not None else "no node binding"
        cpus = f"cpus {format_cpu_list(self.cpus)}" if self.cpus else "not pinned"
        return f"{where}, {cpus}, {self.threads} threads"


def whole_disk_of_file(paths: HostPaths, path: Path, max_depth: int = 4) -> str | None:
    """Kernel name of the physical disk under a file: st_dev -> /sys/dev/block/MAJ:MIN -> the whole disk.

    Partitions map to their parent disk; device-mapper and md devices follow their first slave. Files on
    tmpfs/overlay/NFS have no block device: None.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    link = paths.sys("dev", "block", f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    for _ in range(max_depth):
        if not link.exists():
            return None
        dev = link.resolve()
        if (dev / "partition").exists():
            dev = dev.parent
        slaves = sorted((dev / "slaves").iterdir()) if (dev / "slaves").is_dir() else []
        if not slaves:
            return dev.name
        link = slaves[0]
    return None


def queue_disk_of_file(paths: HostPaths, path: Path) -> str | None:
    """Kernel name of the block device whose queue settings (read_ahead_kb) file reads of `path` use: the device
    behind st_dev, a partition mapped to its whole disk; a device-mapper or md device is itself (its own queue, not
    its slaves'). None for files on tmpfs/overlay/NFS."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    link = paths.sys("dev", "block", f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    if not link.exists():
        return None
    dev = link.resolve()
    return dev.parent.name if (dev / "partition").exists() else dev.name


def physical_cores(facts: HostFacts, cpus: list[int]) -> int:
    """Number of SMT sibling groups that have at least one CPU in `cpus`."""
    wanted = set(cpus)
    groups = [g for g in facts.cpu.smt_siblings if wanted & set(g)]
    covered = set().union(*groups) if groups else set()
    return len(groups) + len(wanted - covered)  # CPUs missing from the sibling map count as one core each


def _node(facts: HostFacts, node_id: int) -> NumaNode | None:
    return next((n for n in facts.cpu.numa_nodes if n.id == node_id), None)


def _node_of_cpus(facts: HostFacts, cpus: list[int]) -> int | None:
    wanted = set(cpus)
    for n in facts.cpu.numa_nodes:
        if wanted <= set(n.cpus):
            return n.id
    return None


def _most_free(facts: HostFacts) -> NumaNode | None:
    nodes = [n for n in facts.cpu.numa_nodes if n.cpus]
    if not nodes:
        return None
    return max(nodes, key=lambda n: (n.memory_free_bytes or 0, -n.id))


def _fits(node: NumaNode, need_bytes: int | None) -> bool:
    return need_bytes is None or node.memory_free_bytes is None or node.memory_free_bytes >= need_bytes


def _gpu_choice(facts: HostFacts, spec: WorkerSpec) -> tuple[int | None, str | None, list[str]]:
    """The GPU the worker offloads to, or None; explicit index validated."""
    if spec.gpu is not None:
        gpu = next((g for g in facts.gpus if g.index == spec.gpu), None)
        if gpu is None:
            raise InputError(f"GPU {spec.gpu} does not exist here ({len(facts.gpus)} GPUs)", field="worker.gpu")
        return gpu.index, gpu.uuid, [f"GPU {gpu.index} ({gpu.name}) chosen by worker.gpu"]
    if spec.gpu_layers == 0 or not facts.gpus:
        return None, None, []
    gpu = min(facts.gpus, key=lambda g: g.index)
    return gpu.index, gpu.uuid, [f"GPU {gpu.index} ({gpu.name}): the engine's main GPU (set worker.gpu to choose)"]


def plan_placement(facts: HostFacts, spec: WorkerSpec, model_path: Path | None = None, *,
                   paths: HostPaths | None = None, model_disk: str | None = None,
                   model_bytes: int | None = None) -> Placement:
    """Choose node, CPUs and threads. model_disk overrides the file-to-disk lookup (tests, remote planning);
    model_bytes (weights) lets auto placement skip a node whose free memory cannot hold the model."""
    paths = paths or HostPaths.live()
    online = set(facts.cpu.online_cpus)
    mode = spec.placement.mode
    gpu_index, gpu_uuid, gpu_reasons = _gpu_choice(facts, spec)
    uses_gpu = gpu_index is not None and spec.gpu_layers != 0

    def result(node: int | None, cpus: list[int], membind: bool, reasons: list[str]) -> Placement:
        threads = physical_cores(facts, cpus)
        if spec.threads is not None:
            reasons.append(f"threads {spec.threads} from worker.threads (physical cores here: {threads})")
            threads = spec.threads
        else:
            reasons.append(f"threads {threads}: physical cores among cpus {format_cpu_list(cpus)}")
        return Placement(node=node, cpus=sorted(cpus), threads=max(1, threads), membind=membind,
                         gpu=gpu_index if uses_gpu else None, gpu_uuid=gpu_uuid if uses_gpu else None,
                         reasons=(gpu_reasons if uses_gpu else []) + reasons)

    if mode == "none":
        # Not pinned at all: threads still follow the host's physical cores, but no CPU list is handed to the
        # binder (a list taken from facts of another host, e.g. a fixture, need not exist here).
        unpinned = result(None, sorted(online), False, ["placement none: not pinned, no memory binding"])
        return unpinned.model_copy(update={"cpus": []})

    explicit_cpus = spec.placement.cpus
    explicit_node = spec.placement.numa_node
    if explicit_node is not None and _node(facts, explicit_node) is None:
        have = ", ".join(str(n.id) for n in facts.cpu.numa_nodes)
        raise InputError(f"NUMA node {explicit_node} does not exist (nodes: {have})",
                         field="worker.placement.numa_node")
    if explicit_cpus is not None:
        if not explicit_cpus:
            raise InputError("cpus must not be empty", field="worker.placement.cpus")
        bad = sorted(set(explicit_cpus) - online)
        if bad:
            raise InputError(f"CPUs {format_cpu_list(bad)} are not online here (online: "
                             f"{format_cpu_list(sorted(online))})", field="worker.placement.cpus")
        node = explicit_node if explicit_node is not None else _node_of_cpus(facts, explicit_cpus)
        why = [f"cpus {format_cpu_list(explicit_cpus)} from worker.placement.cpus"]
        if explicit_node is not None:
            why.append(f"memory bound to node {node} from worker.placement.numa_node")
            node_obj = _node(facts, explicit_node)
            if node_obj is not None and not set(explicit_cpus) <= set(node_obj.cpus):
                why.append(f"note: some cpus are outside node {explicit_node}: their memory accesses are remote")
        elif node is not None:
            why.append(f"memory bound to node {node}: all chosen cpus are on it")
        else:
            why.append("cpus span NUMA nodes: memory not bound")
        return result(node, list(explicit_cpus), node is not None, why)
    if explicit_node is not None:
        node_obj = _node(facts, explicit_node)
        assert node_obj is not None
        if not node_obj.cpus:
            raise InputError(f"NUMA node {explicit_node} has no CPUs (memory-only node)",
                             field="worker.placement.numa_node")
        return result(explicit_node, list(node_obj.cpus), True,
                      [f"node {explicit_node} from worker.placement.numa_node"])
    if mode == "explicit":
        raise InputError("placement mode explicit needs cpus or numa_node", field="worker.placement")

    # auto
    candidates: list[tuple[int, str]] = []
    reasons: list[str] = []
    if uses_gpu:
        gpu = next(g for g in facts.gpus if g.index == gpu_index)
        if gpu.numa_node is not None and gpu.numa_node >= 0:
            candidates.append((gpu.numa_node, f"node {gpu.numa_node}: GPU {gpu.index} ({gpu.pci_bus_id}) is "
                                              "attached there"))
        else:
            reasons.append(f"GPU {gpu.index} reports no NUMA node")
    disk = model_disk
    if disk is None and model_path is not None:
        disk = whole_disk_of_file(paths, model_path)
    if disk is not None:
        dev = next((d for d in facts.block_devices if d.name == disk), None)
        if dev is not None and dev.numa_node is not None and dev.numa_node >= 0:
            candidates.append((dev.numa_node, f"node {dev.numa_node}: the model file is on {disk}, attached there"))
        else:
            reasons.append(f"the model's disk {disk} has no known NUMA node")
    elif model_path is not None:
        reasons.append("the model file is not on a local block device")
    best = _most_free(facts)
    if best is not None:
        free = best.memory_free_bytes
        candidates.append((best.id, f"node {best.id}: most free memory ({free} bytes)" if free is not None
                           else f"node {best.id}: the first node with CPUs"))
    for node_id, because in candidates:
        node_obj = _node(facts, node_id)
        if node_obj is None or not node_obj.cpus:
            reasons.append(f"{because}, but node {node_id} has no CPUs here")
            continue
        if not _fits(node_obj, model_bytes):
            reasons.append(f"{because}, but its free memory ({node_obj.memory_free_bytes} bytes) cannot hold the "
                           f"model ({model_bytes} bytes)")
            continue
        if len(facts.cpu.numa_nodes) == 1:
            because += " (the only NUMA node)"
        return result(node_id, list(node_obj.cpus), True, [*reasons, because])
    return result(None, sorted(online), False, [*reasons, "no NUMA node fits: all online CPUs, memory not bound"])
