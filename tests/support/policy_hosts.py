"""Host facts for policy tests, built in code so each number is visible where a test reasons about it.

Three shapes the shipped policies must resolve on: this CI VM (1 node, 2 CPUs, no cpufreq, no GPU), a two-socket
GPU server (2 nodes, SMT, cpufreq, 8 GPUs, NVMe) and a laptop (1 node, SMT, cpufreq, no GPU, NVMe).
"""

from __future__ import annotations

from agent.inspect.models import (
    BlockDevice,
    CpuFacts,
    CpufreqCpu,
    CpufreqFacts,
    Gpu,
    GpuStatus,
    HostFacts,
    HugepageSize,
    KernelFacts,
    MemoryFacts,
    NumaNode,
    ThpFacts,
)

GiB = 1 << 30


def host(*, nodes: int, cores_per_node: int, smt: bool, mem_gib: int, gpus: int = 0, cpufreq: bool = False,
         disks: tuple[tuple[str, str], ...] = (("vda", "virtio"),), vendor: str = "GenuineIntel") -> HostFacts:
    """CPUs are numbered node by node; with SMT the sibling of CPU c is c + total cores (Linux's usual order)."""
    total_cores = nodes * cores_per_node
    node_cpus: list[list[int]] = []
    for n in range(nodes):
        first = [n * cores_per_node + i for i in range(cores_per_node)]
        node_cpus.append(first + ([c + total_cores for c in first] if smt else []))
    online = sorted(c for cpus in node_cpus for c in cpus)
    siblings = [[c, c + total_cores] if smt else [c] for c in range(total_cores)]
    per_node_mem = mem_gib * GiB // nodes
    return HostFacts(
        hostname="policy-test",
        cpu=CpuFacts(model="Test CPU", vendor=vendor, sockets=nodes, cores=total_cores, threads=len(online),
                     online_cpus=online, smt_siblings=siblings, smt_active=smt, flags=["avx2"],
                     numa_nodes=[NumaNode(id=n, cpus=cpus, memory_total_bytes=per_node_mem,
                                          memory_free_bytes=per_node_mem // 2, distances=[])
                                 for n, cpus in enumerate(node_cpus)]),
        memory=MemoryFacts(total_bytes=mem_gib * GiB, free_bytes=mem_gib * GiB // 2,
                           available_bytes=mem_gib * GiB // 2, hugepage_size_bytes=2 << 20),
        hugepages=[HugepageSize(size_kb=2048, name="2M", total=0, free=0, reserved=0, surplus=0)],
        thp=ThpFacts(available=True, enabled="madvise", enabled_choices=["always", "madvise", "never"],
                     defrag="madvise", defrag_choices=["always", "defer", "defer+madvise", "madvise", "never"]),
        block_devices=[BlockDevice(name=name, kind=kind, rotational=False, read_ahead_kb=128,
                                   scheduler="none", schedulers=["none", "mq-deadline"]) for name, kind in disks],
        gpus=[Gpu(index=i, name="NVIDIA H100 80GB HBM3", uuid=f"GPU-{i:08d}-0000-0000-0000-000000000000",
                  pci_bus_id=f"00000000:{0x18 + i:02X}:00.0", numa_node=i * nodes // max(gpus, 1),
                  memory_total_bytes=80 * GiB) for i in range(gpus)],
        gpu_status=GpuStatus(available=gpus > 0, count=gpus, reason=None if gpus else "no NVIDIA driver"),
        sysctl={"vm.swappiness": "60", "vm.max_map_count": "65530", "net.core.somaxconn": "4096"},
        cpufreq=CpufreqFacts(available=cpufreq, driver="intel_pstate" if cpufreq else None,
                             reason=None if cpufreq else "no cpufreq driver",
                             cpus=[CpufreqCpu(cpu=c, governor="powersave",
                                              available_governors=["performance", "powersave"])
                                   for c in online] if cpufreq else []),
        conflicts=[],
        kernel=KernelFacts(release="6.18.0", cmdline="ro quiet", cmdline_params={"ro": None, "quiet": None}),
    )


def ci_vm() -> HostFacts:
    return host(nodes=1, cores_per_node=2, smt=False, mem_gib=24)


def gpu_server() -> HostFacts:
    return host(nodes=2, cores_per_node=32, smt=True, mem_gib=1024, gpus=8, cpufreq=True,
                disks=(("nvme0n1", "nvme"), ("nvme1n1", "nvme")))


def laptop() -> HostFacts:
    return host(nodes=1, cores_per_node=4, smt=True, mem_gib=16, cpufreq=True, disks=(("nvme0n1", "nvme"),),
                vendor="AuthenticAMD")


HOSTS = {"ci-vm": ci_vm, "gpu-server": gpu_server, "laptop": laptop}
