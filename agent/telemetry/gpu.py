"""GPU telemetry through the NVML funnel: what the controller and /metrics need, one reading per GPU.

Read-only by construction (only getters). Utilization, memory used/free/total, SM and memory clocks, power draw
and limit, temperature and the clock event (throttle) reasons as NVML's bitmask plus their names. A value the GPU
does not report is None; no NVML means no readings (an empty list), never an error. A GPU that fails outright
(GPU_IS_LOST, ...) is left out of that sample and logged, so one broken GPU does not hide the others.
agent/telemetry/gpu_adapter.py turns these readings into dcgm-exporter-style Prometheus families.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pynvml

from agent.nvml import Nvml, NvmlError, session

log = logging.getLogger(__name__)

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


def reason_names(mask: int | None) -> list[str]:
    """Names of the bits set in a clock event reasons mask (unknown bits as hex)."""
    if mask is None:
        return []
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENT_REASONS)
    if unknown:
        names.append(hex(unknown))
    return names


@dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str | None = None
    name: str | None = None
    util_pct: int | None = None
    mem_util_pct: int | None = None
    mem_used_bytes: int | None = None
    mem_free_bytes: int | None = None
    mem_total_bytes: int | None = None
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    power_mw: int | None = None
    power_limit_mw: int | None = None
    temp_c: int | None = None
    clocks_event_reasons: int | None = None
    clocks_event_reason_names: list[str] = field(default_factory=list)


def read_gpu(nvml: Nvml, index: int) -> GpuReading:
    h = nvml.call(pynvml.nvmlDeviceGetHandleByIndex, index)
    util = nvml.call(pynvml.nvmlDeviceGetUtilizationRates, h)
    memory = nvml.call(pynvml.nvmlDeviceGetMemoryInfo, h)
    reasons = nvml.call(pynvml.nvmlDeviceGetCurrentClocksEventReasons, h)
    return GpuReading(
        index=index,
        uuid=nvml.call(pynvml.nvmlDeviceGetUUID, h),
        name=nvml.call(pynvml.nvmlDeviceGetName, h),
        util_pct=None if util is None else int(util.gpu),
        mem_util_pct=None if util is None else int(util.memory),
        mem_used_bytes=None if memory is None else int(memory.used),
        mem_free_bytes=None if memory is None else int(memory.free),
        mem_total_bytes=None if memory is None else int(memory.total),
        sm_clock_mhz=nvml.call(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
        mem_clock_mhz=nvml.call(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM),
        power_mw=nvml.call(pynvml.nvmlDeviceGetPowerUsage, h),
        power_limit_mw=nvml.call(pynvml.nvmlDeviceGetEnforcedPowerLimit, h),
        temp_c=nvml.call(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
        clocks_event_reasons=reasons,
        clocks_event_reason_names=reason_names(reasons),
    )


def sample_gpus(nvml: Nvml | None = None) -> list[GpuReading]:
    """One reading per GPU NVML sees (the process-wide session by default); [] without NVML."""
    nvml = nvml if nvml is not None else session()
    if not nvml.available:
        return []
    readings = []
    for index in range(nvml.device_count()):
        try:
            readings.append(read_gpu(nvml, index))
        except NvmlError as e:
            log.warning("GPU %d left out of this sample: %s", index, e)
    return readings
