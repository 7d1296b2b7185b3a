"""The host facts schema (pydantic). `hosttune inspect --json` emits HostFacts; `--schema` prints its schema.

Stable contract: fields are only added, never renamed or removed, within a schema_version. Absent hardware is
an empty list or `available: false` with a `reason`, never an error. Units are in field names (_bytes, _kb, _mhz,
_mw). docs/inspect.md documents every field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NumaNode(Model):
    id: int
    cpus: list[int] = Field(description="online CPUs of this node")
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    distances: list[int] = Field(default_factory=list, description="SLIT row: distance to node 0, 1, ...")


class CpuFacts(Model):
    model: str | None = None
    vendor: str | None = None
    sockets: int
    cores: int = Field(description="physical cores in total")
    threads: int = Field(description="logical CPUs present")
    online_cpus: list[int]
    smt_siblings: list[list[int]] = Field(description="groups of logical CPUs sharing one physical core")
    smt_active: bool | None = None
    flags: list[str] = Field(default_factory=list, description="selected ISA flags that matter for inference")
    numa_nodes: list[NumaNode]


class MemoryFacts(Model):
    total_bytes: int
    free_bytes: int
    available_bytes: int | None = None
    cached_bytes: int | None = None
    swap_total_bytes: int | None = None
    swap_free_bytes: int | None = None
    anon_hugepages_bytes: int | None = None
    hugepage_size_bytes: int | None = Field(None, description="the default hugepage size")
    mlock_limit_bytes: int | None = None


class HugepagePool(Model):
    total: int
    free: int
    reserved: int | None = None
    surplus: int | None = None


class HugepageSize(Model):
    size_kb: int
    name: str = Field(description="2M or 1G")
    total: int
    free: int
    reserved: int
    surplus: int
    overcommit: int | None = None
    per_node: dict[str, HugepagePool] = Field(default_factory=dict, description="NUMA node id -> pool")


class ThpFacts(Model):
    available: bool
    enabled: str | None = None
    enabled_choices: list[str] = Field(default_factory=list)
    defrag: str | None = None
    defrag_choices: list[str] = Field(default_factory=list)
    khugepaged_defrag: int | None = None


class BlockDevice(Model):
    name: str
    kind: str = Field(description="nvme, virtio, sata, scsi, usb, loop, dm, md, mmc, null_blk, zram, xen, ram, other")
    rotational: bool | None = None
    removable: bool | None = None
    size_bytes: int | None = None
    numa_node: int | None = Field(None, description="NUMA node of the controller's PCI device; None if unknown")
    model: str | None = None
    serial: str | None = None
    read_ahead_kb: int | None = None
    scheduler: str | None = Field(None, description="the active I/O scheduler")
    schedulers: list[str] = Field(default_factory=list)
    nr_requests: int | None = None
    logical_block_size: int | None = None
    pci_address: str | None = None


class GpuClocks(Model):
    sm_mhz: int | None = None
    mem_mhz: int | None = None
    graphics_mhz: int | None = None


class GpuPower(Model):
    limit_mw: int | None = None
    default_limit_mw: int | None = None
    min_limit_mw: int | None = None
    max_limit_mw: int | None = None
    usage_mw: int | None = None


class Gpu(Model):
    index: int
    name: str
    uuid: str
    pci_bus_id: str
    numa_node: int | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    clocks: GpuClocks = Field(default_factory=GpuClocks)
    max_clocks: GpuClocks = Field(default_factory=GpuClocks)
    supported_memory_clocks_mhz: list[int] | None = None
    supported_graphics_clocks_mhz: dict[str, list[int]] | None = Field(
        None, description="memory clock MHz -> supported graphics clocks MHz")
    power: GpuPower = Field(default_factory=GpuPower)
    persistence_mode: bool | None = None
    compute_mode: str | None = None
    driver_version: str | None = None
    cuda_compute_capability: str | None = None


class GpuStatus(Model):
    available: bool
    reason: str | None = None
    driver_version: str | None = None
    nvml_version: str | None = None
    cuda_driver_version: str | None = Field(None, description="CUDA version the driver supports, e.g. 12.8")
    count: int = 0
    errors: list[str] = Field(default_factory=list, description="GPUs NVML lists but could not read (e.g. lost)")


class CpufreqCpu(Model):
    cpu: int
    governor: str | None = None
    available_governors: list[str] = Field(default_factory=list)
    driver: str | None = None
    energy_performance_preference: str | None = None
    available_energy_performance_preferences: list[str] = Field(default_factory=list)
    min_khz: int | None = None
    max_khz: int | None = None


class CpufreqFacts(Model):
    available: bool
    reason: str | None = None
    driver: str | None = None
    cpus: list[CpufreqCpu] = Field(default_factory=list)


class Conflict(Model):
    name: str = Field(description="tuned, irqbalance, numad, power-profiles-daemon, tlp, bpftune")
    pid: int | None = None
    detail: str | None = None
    manages: list[str] = Field(default_factory=list, description="tuner domains it may fight over")


class KernelFacts(Model):
    release: str | None = None
    version: str | None = None
    cmdline: str | None = None
    cmdline_params: dict[str, str | None] = Field(default_factory=dict)


class HostFacts(Model):
    schema_version: int = SCHEMA_VERSION
    hostname: str | None = None
    cpu: CpuFacts
    memory: MemoryFacts
    hugepages: list[HugepageSize]
    thp: ThpFacts
    block_devices: list[BlockDevice]
    gpus: list[Gpu]
    gpu_status: GpuStatus
    sysctl: dict[str, str] = Field(description="current values of the keys policies may set (absent keys omitted)")
    cpufreq: CpufreqFacts
    conflicts: list[Conflict]
    kernel: KernelFacts
    errors: list[str] = Field(default_factory=list, description="collectors that failed (contained, reported)")
