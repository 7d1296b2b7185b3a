"""GPU facts from the one device reader (agent.gpu.device), plus each GPU's NUMA node from sysfs.

No NVML (no driver, no library) is `gpus: []` with a GpuStatus that says why. A value the GPU or driver does
not report (NOT_SUPPORTED) is None. A GPU that fails outright (GPU_IS_LOST, ...) is left out and named in
GpuStatus.errors, so one broken GPU does not hide the others.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.errors import HostError
from agent.fsio import read_int
from agent.gpu.device import Device, read_system
from agent.gpu.nvml import Nvml
from agent.hostfs import HostPaths
from agent.inspect.models import Gpu, GpuClocks, GpuPower, GpuStatus


def pci_numa_node(paths: HostPaths, address: str) -> int | None:
    """The NUMA node the kernel assigns to a PCI device; None when unknown (-1, or no such file)."""
    node = read_int(paths.sys("bus/pci/devices", address, "numa_node"))
    return None if node is None or node < 0 else node


def _clocks(read: Callable[[str], int | None]) -> GpuClocks:
    return GpuClocks(sm_mhz=read("sm"), mem_mhz=read("mem"), graphics_mhz=read("graphics"))


def read_gpu(paths: HostPaths, nvml: Nvml, index: int, driver_version: str | None) -> Gpu:
    """All facts of one GPU. Raises NvmlError when the GPU fails a call that must work (handle, identity)."""
    device = Device.open(nvml, index)
    address = device.pci_address()
    memory = device.memory()
    supported = device.supported_clocks()
    graphics = {str(mem): clocks for mem, clocks in (supported or {}).items() if clocks is not None}
    power_range = device.power_limit_range_mw()
    lo, hi = power_range if power_range is not None else (None, None)
    return Gpu(
        index=index,
        name=device.name(),
        uuid=device.uuid(),
        pci_bus_id=address,
        numa_node=pci_numa_node(paths, address),
        memory_total_bytes=None if memory is None else memory.total,
        memory_used_bytes=None if memory is None else memory.used,
        memory_free_bytes=None if memory is None else memory.free,
        clocks=_clocks(device.clock),
        max_clocks=_clocks(device.max_clock),
        supported_memory_clocks_mhz=None if supported is None else list(supported),
        supported_graphics_clocks_mhz=graphics or None,
        power=GpuPower(limit_mw=device.power_limit_mw(), default_limit_mw=device.default_power_limit_mw(),
                       min_limit_mw=lo, max_limit_mw=hi, usage_mw=device.power_usage_mw()),
        persistence_mode=device.persistence(),
        compute_mode=device.compute_mode(),
        driver_version=driver_version,
        cuda_compute_capability=device.cuda_capability(),
    )


def inspect_gpus(paths: HostPaths, nvml: Nvml) -> tuple[list[Gpu], GpuStatus]:
    """Every GPU NVML sees, in NVML index order, and the status of NVML itself."""
    if not nvml.available:
        return [], GpuStatus(available=False, reason=nvml.reason)
    system = read_system(nvml)
    count = nvml.device_count()
    gpus: list[Gpu] = []
    errors: list[str] = []
    for index in range(count):
        try:
            gpus.append(read_gpu(paths, nvml, index, system.driver_version))
        except HostError as e:
            errors.append(f"gpu {index}: {e}")
    return gpus, GpuStatus(available=True, driver_version=system.driver_version, nvml_version=system.nvml_version,
                           cuda_driver_version=system.cuda_driver_version, count=count, errors=errors)
