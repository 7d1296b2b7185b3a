"""GPU facts through the NVML funnel, plus each GPU's NUMA node from sysfs.

No NVML (no driver, no library) is `gpus: []` with a GpuStatus that says why. A value the GPU or driver does
not report (NOT_SUPPORTED) is None. A GPU that fails outright (GPU_IS_LOST, ...) is left out and named in
GpuStatus.errors, so one broken GPU does not hide the others.
"""

from __future__ import annotations

from typing import Any

import pynvml

from agent.errors import HostError
from agent.fsio import read_int
from agent.hostfs import HostPaths
from agent.inspect.models import Gpu, GpuClocks, GpuPower, GpuStatus
from agent.nvml import Nvml

COMPUTE_MODES = {
    pynvml.NVML_COMPUTEMODE_DEFAULT: "default",
    pynvml.NVML_COMPUTEMODE_EXCLUSIVE_THREAD: "exclusive_thread",
    pynvml.NVML_COMPUTEMODE_PROHIBITED: "prohibited",
    pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS: "exclusive_process",
}


def sysfs_pci_address(bus_id: str) -> str:
    """NVML's '00000000:18:00.0' -> sysfs's '0000:18:00.0' (4-digit domain, lowercase)."""
    try:
        domain, bus, devfn = bus_id.strip().split(":")
        dev, fn = devfn.split(".")
        return f"{int(domain, 16):04x}:{int(bus, 16):02x}:{int(dev, 16):02x}.{int(fn, 16):x}"
    except ValueError:
        raise HostError(f"NVML reported a malformed PCI bus id {bus_id!r}") from None


def pci_numa_node(paths: HostPaths, address: str) -> int | None:
    """The NUMA node the kernel assigns to a PCI device; None when unknown (-1, or no such file)."""
    node = read_int(paths.sys("bus/pci/devices", address, "numa_node"))
    return None if node is None or node < 0 else node


def _clocks(nvml: Nvml, fn: Any, handle: Any) -> GpuClocks:
    return GpuClocks(sm_mhz=nvml.call(fn, handle, pynvml.NVML_CLOCK_SM),
                     mem_mhz=nvml.call(fn, handle, pynvml.NVML_CLOCK_MEM),
                     graphics_mhz=nvml.call(fn, handle, pynvml.NVML_CLOCK_GRAPHICS))


def _supported_clocks(nvml: Nvml, handle: Any) -> tuple[list[int] | None, dict[str, list[int]] | None]:
    memory = nvml.call(pynvml.nvmlDeviceGetSupportedMemoryClocks, handle)
    if memory is None:
        return None, None
    graphics: dict[str, list[int]] = {}
    for mem in memory:
        clocks = nvml.call(pynvml.nvmlDeviceGetSupportedGraphicsClocks, handle, mem)
        if clocks is not None:
            graphics[str(mem)] = [int(c) for c in clocks]
    return [int(m) for m in memory], graphics or None


def _power(nvml: Nvml, handle: Any) -> GpuPower:
    constraints = nvml.call(pynvml.nvmlDeviceGetPowerManagementLimitConstraints, handle)
    lo, hi = constraints if constraints is not None else (None, None)
    return GpuPower(limit_mw=nvml.call(pynvml.nvmlDeviceGetPowerManagementLimit, handle),
                    default_limit_mw=nvml.call(pynvml.nvmlDeviceGetPowerManagementDefaultLimit, handle),
                    min_limit_mw=lo, max_limit_mw=hi,
                    usage_mw=nvml.call(pynvml.nvmlDeviceGetPowerUsage, handle))


def read_gpu(paths: HostPaths, nvml: Nvml, index: int, driver_version: str | None) -> Gpu:
    """All facts of one GPU. Raises NvmlError when the GPU fails a call that must work (handle, identity)."""
    handle = nvml.call(pynvml.nvmlDeviceGetHandleByIndex, index)
    pci = nvml.call(pynvml.nvmlDeviceGetPciInfo, handle)
    bus_id = pci.busId.decode() if isinstance(pci.busId, bytes) else str(pci.busId)
    address = sysfs_pci_address(bus_id)
    memory = nvml.call(pynvml.nvmlDeviceGetMemoryInfo, handle)
    supported_mem, supported_graphics = _supported_clocks(nvml, handle)
    persistence = nvml.call(pynvml.nvmlDeviceGetPersistenceMode, handle)
    compute = nvml.call(pynvml.nvmlDeviceGetComputeMode, handle)
    capability = nvml.call(pynvml.nvmlDeviceGetCudaComputeCapability, handle)
    return Gpu(
        index=index,
        name=nvml.call(pynvml.nvmlDeviceGetName, handle),
        uuid=nvml.call(pynvml.nvmlDeviceGetUUID, handle),
        pci_bus_id=address,
        numa_node=pci_numa_node(paths, address),
        memory_total_bytes=None if memory is None else int(memory.total),
        memory_used_bytes=None if memory is None else int(memory.used),
        memory_free_bytes=None if memory is None else int(memory.free),
        clocks=_clocks(nvml, pynvml.nvmlDeviceGetClockInfo, handle),
        max_clocks=_clocks(nvml, pynvml.nvmlDeviceGetMaxClockInfo, handle),
        supported_memory_clocks_mhz=supported_mem,
        supported_graphics_clocks_mhz=supported_graphics,
        power=_power(nvml, handle),
        persistence_mode=None if persistence is None else persistence == pynvml.NVML_FEATURE_ENABLED,
        compute_mode=None if compute is None else COMPUTE_MODES.get(compute, str(compute)),
        driver_version=driver_version,
        cuda_compute_capability=None if capability is None else f"{capability[0]}.{capability[1]}",
    )


def _cuda_version(nvml: Nvml) -> str | None:
    version = nvml.call(pynvml.nvmlSystemGetCudaDriverVersion)
    return None if version is None else f"{version // 1000}.{version % 1000 // 10}"


def inspect_gpus(paths: HostPaths, nvml: Nvml) -> tuple[list[Gpu], GpuStatus]:
    """Every GPU NVML sees, in NVML index order, and the status of NVML itself."""
    if not nvml.available:
        return [], GpuStatus(available=False, reason=nvml.reason)
    driver = nvml.call(pynvml.nvmlSystemGetDriverVersion)
    count = nvml.device_count()
    gpus: list[Gpu] = []
    errors: list[str] = []
    for index in range(count):
        try:
            gpus.append(read_gpu(paths, nvml, index, driver))
        except HostError as e:
            errors.append(f"gpu {index}: {e}")
    return gpus, GpuStatus(available=True, driver_version=driver,
                           nvml_version=nvml.call(pynvml.nvmlSystemGetNVMLVersion),
                           cuda_driver_version=_cuda_version(nvml), count=count, errors=errors)
