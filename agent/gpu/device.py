"""One GPU as NVML shows it: the one device reader that inspection, the GPU tuner and telemetry derive from.

A Device is a handle plus typed reads through the funnel (agent.gpu.nvml), and the few setters the GPU tuner
uses. A value the GPU or driver does not report is None (the funnel's NOT_SUPPORTED rule); a GPU that fails
outright raises NvmlError. Nothing here caches: each read asks NVML, so callers choose what to read and when
(telemetry reads a few values every second, inspection reads everything once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pynvml

from agent.errors import HostError
from agent.gpu.nvml import Nvml

COMPUTE_MODES = {
    pynvml.NVML_COMPUTEMODE_DEFAULT: "default",
    pynvml.NVML_COMPUTEMODE_EXCLUSIVE_THREAD: "exclusive_thread",
    pynvml.NVML_COMPUTEMODE_PROHIBITED: "prohibited",
    pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS: "exclusive_process",
}
# NVML's clock event reason bits (called throttle reasons before NVML 12), named as nvidia-smi names them.
CLOCK_EVENT_REASONS: dict[int, str] = {
    pynvml.nvmlClocksEventReasonGpuIdle: "gpu_idle",
    pynvml.nvmlClocksEventReasonApplicationsClocksSetting: "applications_clocks_setting",
    pynvml.nvmlClocksEventReasonSwPowerCap: "sw_power_cap",
    pynvml.nvmlClocksEventReasonHwSlowdown: "hw_slowdown",
    pynvml.nvmlClocksEventReasonSyncBoost: "sync_boost",
    pynvml.nvmlClocksEventReasonSwThermalSlowdown: "sw_thermal_slowdown",
    pynvml.nvmlClocksEventReasonHwThermalSlowdown: "hw_thermal_slowdown",
    pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown: "hw_power_brake_slowdown",
    pynvml.nvmlClocksEventReasonDisplayClockSetting: "display_clock_setting",
}
# The same bits as Prometheus label values (hosttune_gpu_clock_event_active{reason}): short, stable, one per bit.
CLOCK_EVENT_LABELS: dict[int, str] = {
    pynvml.nvmlClocksEventReasonGpuIdle: "gpu_idle",
    pynvml.nvmlClocksEventReasonApplicationsClocksSetting: "applications_clocks",
    pynvml.nvmlClocksEventReasonSwPowerCap: "sw_power_cap",
    pynvml.nvmlClocksEventReasonHwSlowdown: "hw_slowdown",
    pynvml.nvmlClocksEventReasonSyncBoost: "sync_boost",
    pynvml.nvmlClocksEventReasonSwThermalSlowdown: "sw_thermal",
    pynvml.nvmlClocksEventReasonHwThermalSlowdown: "hw_thermal",
    pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown: "hw_power_brake",
    pynvml.nvmlClocksEventReasonDisplayClockSetting: "display_clocks",
}
CLOCKS = {"sm": pynvml.NVML_CLOCK_SM, "mem": pynvml.NVML_CLOCK_MEM, "graphics": pynvml.NVML_CLOCK_GRAPHICS}
ARCH_VOLTA = pynvml.NVML_DEVICE_ARCH_VOLTA
ARCH_AMPERE = pynvml.NVML_DEVICE_ARCH_AMPERE
BASE_CLOCK = pynvml.NVML_CLOCK_LIMIT_ID_TDP  # as a lock bound: NVML's TDP base clock


def reason_names(mask: int | None) -> list[str]:
    """Names of the bits set in a clock event reasons mask (unknown bits as hex)."""
    if mask is None:
        return []
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENT_REASONS)
    if unknown:
        names.append(hex(unknown))
    return names


def sysfs_pci_address(bus_id: str) -> str:
    """NVML's '00000000:18:00.0' -> sysfs's '0000:18:00.0' (4-digit domain, lowercase)."""
    try:
        domain, bus, devfn = bus_id.strip().split(":")
        dev, fn = devfn.split(".")
        return f"{int(domain, 16):04x}:{int(bus, 16):02x}:{int(dev, 16):02x}.{int(fn, 16):x}"
    except ValueError:
        raise HostError(f"NVML reported a malformed PCI bus id {bus_id!r}") from None


@dataclass(frozen=True)
class Memory:
    total: int
    used: int
    free: int


@dataclass(frozen=True)
class System:
    driver_version: str | None
    nvml_version: str | None
    cuda_driver_version: str | None


def read_system(nvml: Nvml) -> System:
    """Driver, NVML and CUDA driver versions (call only when nvml.available)."""
    cuda = nvml.call(pynvml.nvmlSystemGetCudaDriverVersion)
    return System(driver_version=nvml.call(pynvml.nvmlSystemGetDriverVersion),
                  nvml_version=nvml.call(pynvml.nvmlSystemGetNVMLVersion),
                  cuda_driver_version=None if cuda is None else f"{cuda // 1000}.{cuda % 1000 // 10}")


class Device:
    """One GPU: `index` and NVML's opaque handle, read (and set) through the session it was opened with."""

    def __init__(self, nvml: Nvml, index: int, handle: Any) -> None:
        self.nvml = nvml
        self.index = index
        self.handle = handle

    @classmethod
    def open(cls, nvml: Nvml, index: int, uuid: str | None = None) -> Device:
        """The GPU at `index`, or (given) the one with `uuid`: a GPU keeps its UUID when indexes move."""
        if uuid:
            return cls(nvml, index, nvml.call(pynvml.nvmlDeviceGetHandleByUUID, uuid))
        return cls(nvml, index, nvml.call(pynvml.nvmlDeviceGetHandleByIndex, index))

    def _get(self, fn: Any, *args: Any) -> Any:
        return self.nvml.call(fn, self.handle, *args)

    # -- identity -------------------------------------------------------------------------------------------

    def uuid(self) -> str:
        uuid: str = self._get(pynvml.nvmlDeviceGetUUID)
        return uuid

    def name(self) -> str:
        name: str = self._get(pynvml.nvmlDeviceGetName)
        return name

    def pci_address(self) -> str:
        """The sysfs form of the GPU's PCI address ('0000:18:00.0')."""
        pci = self._get(pynvml.nvmlDeviceGetPciInfo)
        return sysfs_pci_address(pci.busId.decode() if isinstance(pci.busId, bytes) else str(pci.busId))

    def pci_bus_id(self) -> str | None:
        """NVML's own form of the PCI address ('00000000:18:00.0'), as dcgm-exporter labels it."""
        pci = self._get(pynvml.nvmlDeviceGetPciInfo)
        return None if pci is None else (pci.busId.decode() if isinstance(pci.busId, bytes) else str(pci.busId))

    def minor_number(self) -> int | None:
        """N of the GPU's /dev/nvidiaN."""
        return self._get(pynvml.nvmlDeviceGetMinorNumber)

    def architecture(self) -> int | None:
        return self._get(pynvml.nvmlDeviceGetArchitecture)

    def cuda_capability(self) -> str | None:
        capability = self._get(pynvml.nvmlDeviceGetCudaComputeCapability)
        return None if capability is None else f"{capability[0]}.{capability[1]}"

    # -- state ----------------------------------------------------------------------------------------------

    def memory(self) -> Memory | None:
        info = self._get(pynvml.nvmlDeviceGetMemoryInfo)
        return None if info is None else Memory(total=int(info.total), used=int(info.used), free=int(info.free))

    def utilization(self) -> tuple[int, int] | None:
        """(GPU %, memory %) over NVML's last sample period."""
        rates = self._get(pynvml.nvmlDeviceGetUtilizationRates)
        return None if rates is None else (int(rates.gpu), int(rates.memory))

    def clock(self, kind: str) -> int | None:
        """The current 'sm', 'mem' or 'graphics' clock in MHz."""
        return self._get(pynvml.nvmlDeviceGetClockInfo, CLOCKS[kind])

    def max_clock(self, kind: str) -> int | None:
        return self._get(pynvml.nvmlDeviceGetMaxClockInfo, CLOCKS[kind])

    def supported_clocks(self) -> dict[int, list[int] | None] | None:
        """Supported memory clock -> the SM clocks supported with it (MHz, in NVML's order; None where NVML does
        not list them); None when NVML does not list the memory clocks."""
        memory = self._get(pynvml.nvmlDeviceGetSupportedMemoryClocks)
        if memory is None:
            return None
        listed: dict[int, list[int] | None] = {}
        for mem in memory:
            clocks = self._get(pynvml.nvmlDeviceGetSupportedGraphicsClocks, mem)
            listed[int(mem)] = None if clocks is None else [int(c) for c in clocks]
        return listed

    def temperature_c(self) -> int | None:
        return self._get(pynvml.nvmlDeviceGetTemperature, pynvml.NVML_TEMPERATURE_GPU)

    def clocks_event_reasons(self) -> int | None:
        return self._get(pynvml.nvmlDeviceGetCurrentClocksEventReasons)

    def volatile_ecc_errors(self) -> tuple[int, int] | None:
        """(corrected, uncorrected) ECC errors since the driver loaded; None when ECC is off or not supported
        (NVML counts nothing then, and a 0 would claim clean memory)."""
        mode = self._get(pynvml.nvmlDeviceGetEccMode)
        if mode is None or mode[0] != pynvml.NVML_FEATURE_ENABLED:
            return None
        counts = [self._get(pynvml.nvmlDeviceGetTotalEccErrors, kind, pynvml.NVML_VOLATILE_ECC)
                  for kind in (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)]
        return None if None in counts else (int(counts[0]), int(counts[1]))

    def power_usage_mw(self) -> int | None:
        return self._get(pynvml.nvmlDeviceGetPowerUsage)

    def power_limit_mw(self) -> int | None:
        return self._get(pynvml.nvmlDeviceGetPowerManagementLimit)

    def enforced_power_limit_mw(self) -> int | None:
        return self._get(pynvml.nvmlDeviceGetEnforcedPowerLimit)

    def default_power_limit_mw(self) -> int | None:
        return self._get(pynvml.nvmlDeviceGetPowerManagementDefaultLimit)

    def power_limit_range_mw(self) -> tuple[int, int] | None:
        constraints = self._get(pynvml.nvmlDeviceGetPowerManagementLimitConstraints)
        return None if constraints is None else (int(constraints[0]), int(constraints[1]))

    def persistence(self) -> bool | None:
        mode = self._get(pynvml.nvmlDeviceGetPersistenceMode)
        return None if mode is None else mode == pynvml.NVML_FEATURE_ENABLED

    def compute_mode(self) -> str | None:
        mode = self._get(pynvml.nvmlDeviceGetComputeMode)
        return None if mode is None else COMPUTE_MODES.get(mode, str(mode))

    # -- setters (the GPU tuner's; the funnel refuses them in dry-run) --------------------------------------

    def set_power_limit_mw(self, mw: int) -> None:
        self._get(pynvml.nvmlDeviceSetPowerManagementLimit, mw)

    def set_persistence(self, enabled: bool) -> None:
        self._get(pynvml.nvmlDeviceSetPersistenceMode,
                  pynvml.NVML_FEATURE_ENABLED if enabled else pynvml.NVML_FEATURE_DISABLED)

    def lock_clocks(self, memory: bool, lo: int, hi: int) -> None:
        """Lock the SM (or memory) clock to lo..hi MHz (BASE_CLOCK for NVML's base clock)."""
        self._get(pynvml.nvmlDeviceSetMemoryLockedClocks if memory else pynvml.nvmlDeviceSetGpuLockedClocks, lo, hi)

    def reset_locked_clocks(self, memory: bool) -> None:
        self._get(pynvml.nvmlDeviceResetMemoryLockedClocks if memory else pynvml.nvmlDeviceResetGpuLockedClocks)
