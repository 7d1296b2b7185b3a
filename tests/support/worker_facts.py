"""HostFacts built in code for worker tests (small, explicit hosts whose numbers the tests can reason about),
and GGUF files written with gguf's own GGUFWriter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from agent.inspect.models import (
    BlockDevice,
    CpuFacts,
    CpufreqFacts,
    Gpu,
    GpuStatus,
    HostFacts,
    KernelFacts,
    MemoryFacts,
    NumaNode,
    ThpFacts,
)

GiB = 1024**3


def facts(nodes: list[tuple[list[int], int]], smt: list[list[int]], gpus: Sequence[tuple[int, int | None, int]] = (),
          disks: Sequence[tuple[str, int | None]] = (), mem_available: int = 64 * GiB) -> HostFacts:
    """nodes: (cpus, free bytes); gpus: (index, numa node, free bytes); disks: (name, numa node)."""
    online = sorted(c for cpus, _ in nodes for c in cpus)
    return HostFacts(
        cpu=CpuFacts(sockets=len(nodes), cores=len(smt), threads=len(online), online_cpus=online, smt_siblings=smt,
                     numa_nodes=[NumaNode(id=i, cpus=cpus, memory_total_bytes=2 * free, memory_free_bytes=free)
                                 for i, (cpus, free) in enumerate(nodes)]),
        memory=MemoryFacts(total_bytes=2 * mem_available, free_bytes=mem_available // 2,
                           available_bytes=mem_available),
        hugepages=[], thp=ThpFacts(available=False), cpufreq=CpufreqFacts(available=False),
        block_devices=[BlockDevice(name=n, kind="nvme", numa_node=node) for n, node in disks],
        gpus=[Gpu(index=i, name="NVIDIA H100 80GB HBM3", uuid=f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd",
                  pci_bus_id=f"00000000:{0x18 + i:02X}:00.0", numa_node=node, memory_total_bytes=80 * GiB,
                  memory_free_bytes=free) for i, node, free in gpus],
        gpu_status=GpuStatus(available=bool(gpus), count=len(gpus)),
        sysctl={}, conflicts=[], kernel=KernelFacts(),
    )


def two_socket_server(node0_free: int = 200 * GiB, node1_free: int = 180 * GiB) -> HostFacts:
    """Like the server-2s-8gpu fixture: 2 sockets x 4 cores x 2 threads (siblings n and n+8), GPUs 0-3 on node 0
    and 4-7 on node 1, nvme0n1 on node 0 and nvme1n1 on node 1."""
    node0 = [0, 1, 2, 3, 8, 9, 10, 11]
    node1 = [4, 5, 6, 7, 12, 13, 14, 15]
    smt = [[c, c + 8] for c in range(8)]
    return facts([(node0, node0_free), (node1, node1_free)], smt,
                 gpus=[(i, 0 if i < 4 else 1, 79 * GiB) for i in range(8)],
                 disks=[("nvme0n1", 0), ("nvme1n1", 1)])


def one_node_vm(free: int = 20 * GiB) -> HostFacts:
    return facts([([0, 1], free)], [[0], [1]], disks=[("vda", None)], mem_available=free)


def write_gguf(path: Path, *, n_layer: int = 4, n_embd: int = 256, n_head: int = 8, n_head_kv: int = 2,
               key_length: int | None = 64, value_length: int | None = 48, ctx: int = 4096) -> Path:
    w = GGUFWriter(str(path), "qwen2")
    w.add_block_count(n_layer)
    w.add_embedding_length(n_embd)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_context_length(ctx)
    w.add_vocab_size(1000)
    if key_length is not None:
        w.add_key_length(key_length)
    if value_length is not None:
        w.add_value_length(value_length)
    w.add_tensor("token_embd.weight", np.zeros((1000, n_embd), dtype=np.float16))
    w.add_tensor("output.weight", np.zeros((1000, n_embd), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
