"""GPU telemetry from the one device reader (agent.gpu.device), in dcgm-exporter's names.

Read-only by construction (only getters). One GpuSample per GPU: utilization, memory used/free/total, SM and
memory clocks, power draw and enforced limit (W), temperature and the clock event (throttle) reasons as NVML's
bitmask. A value the GPU does not report is None (and its Prometheus sample is left out, not 0); no NVML means
no samples (an empty list), never an error. A GPU that fails outright (GPU_IS_LOST, ...) is left out of that
sample and logged, so one broken GPU does not hide the others. The sampler is handed its NVML session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.gpu.device import Device
from agent.gpu.nvml import Nvml, NvmlError
from agent.metrics.prom import MetricFamily

log = logging.getLogger(__name__)
MIB = 1 << 20


@dataclass(frozen=True)
class GpuSample:
    index: int
    uuid: str | None = None
    name: str | None = None
    util_pct: float | None = None
    mem_util_pct: float | None = None
    mem_used_bytes: int | None = None
    mem_total_bytes: int | None = None
    mem_free_bytes: int | None = None
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    temp_c: float | None = None
    throttle_reasons: int | None = None


def _num(value: int | None) -> float | None:
    return None if value is None else float(value)


def _watts(mw: int | None) -> float | None:
    return None if mw is None else mw / 1000.0


def read_sample(device: Device) -> GpuSample:
    util = device.utilization()
    memory = device.memory()
    return GpuSample(
        index=device.index, uuid=device.uuid(), name=device.name(),
        util_pct=None if util is None else float(util[0]), mem_util_pct=None if util is None else float(util[1]),
        mem_used_bytes=None if memory is None else memory.used,
        mem_total_bytes=None if memory is None else memory.total,
        mem_free_bytes=None if memory is None else memory.free,
        sm_clock_mhz=_num(device.clock("sm")), mem_clock_mhz=_num(device.clock("mem")),
        power_w=_watts(device.power_usage_mw()), power_limit_w=_watts(device.enforced_power_limit_mw()),
        temp_c=_num(device.temperature_c()), throttle_reasons=device.clocks_event_reasons())


def sample_gpus(nvml: Nvml) -> list[GpuSample]:
    """One sample per GPU NVML sees; [] without NVML."""
    if not nvml.available:
        return []
    samples = []
    for index in range(nvml.device_count()):
        try:
            samples.append(read_sample(Device.open(nvml, index)))
        except NvmlError as e:
            log.warning("GPU %d left out of this sample: %s", index, e)
    return samples


_FAMILIES: list[tuple[str, str, Callable[[GpuSample], float | int | None]]] = [
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", lambda g: g.util_pct),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", lambda g: g.mem_util_pct),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).",
     lambda g: None if g.mem_used_bytes is None else g.mem_used_bytes / MIB),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).",
     lambda g: None if g.mem_free_bytes is None else g.mem_free_bytes / MIB),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", lambda g: g.sm_clock_mhz),
    ("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", lambda g: g.mem_clock_mhz),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", lambda g: g.power_w),
    ("DCGM_FI_DEV_POWER_MGMT_LIMIT", "Enforced power limit (in W).", lambda g: g.power_limit_w),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", lambda g: g.temp_c),
    ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "Current clock throttle reasons (NVML bitmask).",
     lambda g: g.throttle_reasons),
]


class GpuSampler:
    """The telemetry collector's GPU sampler, on the NVML session it is handed."""

    name = "gpu"

    def __init__(self, nvml: Nvml) -> None:
        self.nvml = nvml

    def sample(self) -> list[GpuSample]:
        return sample_gpus(self.nvml)

    @staticmethod
    def families(gpus: Sequence[GpuSample]) -> list[MetricFamily]:
        out = []
        for name, help, get in _FAMILIES:
            fam = MetricFamily(name, "gauge", help)
            for g in gpus:
                labels = {"gpu": str(g.index)}
                if g.uuid:
                    labels["UUID"] = g.uuid
                if g.name:
                    labels["modelName"] = g.name
                fam.add(get(g), labels)
            if fam.samples:
                out.append(fam)
        return out
