"""GPU telemetry from the one device reader (agent.gpu.device), in dcgm-exporter's names and labels.

Read-only by construction (only getters). One GpuSample per GPU: utilization, memory used/free/total, SM and
memory clocks, power draw and enforced limit (W), temperature, the clock event (throttle) reasons as NVML's
bitmask, the volatile ECC error counts (None where ECC is off or unsupported) and the last Xid (agent.gpu.xid).
A value the GPU does not report is None (and its Prometheus sample is left out, not 0); no NVML means no samples
(an empty list), never an error. A GPU that fails outright (GPU_IS_LOST, ...) is left out of that sample and
logged, so one broken GPU does not hide the others. The sampler is handed its NVML session.

Every series carries dcgm-exporter's labels: gpu (NVML index), UUID, device ("nvidia<minor>"), modelName,
Hostname and pci_bus_id (NVML's '00000000:18:00.0' form), so a dashboard or rule written for dcgm-exporter reads
ours. PromQL has no bitwise operators, so the reason mask is also exported one bit per series:
hosttune_gpu_clock_event_active{reason} 0/1.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.gpu.device import CLOCK_EVENT_LABELS, Device
from agent.gpu.nvml import Nvml, NvmlError
from agent.gpu.xid import XidWatch
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
    minor: int | None = None                   # /dev/nvidia<minor>
    pci_bus_id: str | None = None              # NVML's form, 00000000:18:00.0
    hostname: str | None = None
    ecc_sbe_volatile: int | None = None        # corrected ECC errors since the driver loaded; None: ECC off
    ecc_dbe_volatile: int | None = None        # uncorrected
    xid: int | None = None                     # last Xid since the watch began (0: none); None: not watched


def _num(value: int | None) -> float | None:
    return None if value is None else float(value)


def _watts(mw: int | None) -> float | None:
    return None if mw is None else mw / 1000.0


def read_sample(device: Device, xids: XidWatch | None = None, hostname: str | None = None) -> GpuSample:
    util = device.utilization()
    memory = device.memory()
    uuid = device.uuid()
    ecc = device.volatile_ecc_errors()
    if xids is not None:
        xids.watch(device, uuid)
    return GpuSample(
        index=device.index, uuid=uuid, name=device.name(), minor=device.minor_number(),
        pci_bus_id=device.pci_bus_id(), hostname=hostname,
        ecc_sbe_volatile=None if ecc is None else ecc[0], ecc_dbe_volatile=None if ecc is None else ecc[1],
        xid=None if xids is None else xids.last(uuid),
        util_pct=None if util is None else float(util[0]), mem_util_pct=None if util is None else float(util[1]),
        mem_used_bytes=None if memory is None else memory.used,
        mem_total_bytes=None if memory is None else memory.total,
        mem_free_bytes=None if memory is None else memory.free,
        sm_clock_mhz=_num(device.clock("sm")), mem_clock_mhz=_num(device.clock("mem")),
        power_w=_watts(device.power_usage_mw()), power_limit_w=_watts(device.enforced_power_limit_mw()),
        temp_c=_num(device.temperature_c()), throttle_reasons=device.clocks_event_reasons())


def sample_gpus(nvml: Nvml, xids: XidWatch | None = None, hostname: str | None = None) -> list[GpuSample]:
    """One sample per GPU NVML sees; [] without NVML. With `xids`, the events queued since the last sample are
    taken first, so each GPU's sample carries its last Xid."""
    if not nvml.available:
        return []
    if xids is not None:
        xids.drain()
    samples = []
    for index in range(nvml.device_count()):
        try:
            samples.append(read_sample(Device.open(nvml, index), xids, hostname))
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
    ("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.", lambda g: g.xid),
]
# dcgm-exporter's counters: volatile ECC totals (since the driver loaded); absent where ECC is off.
_COUNTERS: list[tuple[str, str, Callable[[GpuSample], float | int | None]]] = [
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "Total number of single-bit volatile ECC errors.",
     lambda g: g.ecc_sbe_volatile),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors.",
     lambda g: g.ecc_dbe_volatile),
]


def dcgm_labels(g: GpuSample) -> dict[str, str]:
    """dcgm-exporter's label set for one GPU (a label whose value NVML did not give is left out)."""
    given = {"gpu": str(g.index), "UUID": g.uuid, "pci_bus_id": g.pci_bus_id,
             "device": None if g.minor is None else f"nvidia{g.minor}", "modelName": g.name, "Hostname": g.hostname}
    labels: dict[str, str] = {}
    for name, value in given.items():
        if value:
            labels[name] = value
    return labels


def clock_event_family(gpus: Sequence[GpuSample]) -> MetricFamily:
    fam = MetricFamily("hosttune_gpu_clock_event_active", "gauge",
                       "1 while NVML reports this clock event (throttle) reason for the GPU, else 0.")
    for g in gpus:
        if g.throttle_reasons is None:
            continue
        for bit, reason in CLOCK_EVENT_LABELS.items():
            fam.add(int(bool(g.throttle_reasons & bit)), {**dcgm_labels(g), "reason": reason})
    return fam


class GpuSampler:
    """The telemetry collector's GPU sampler, on the NVML session it is handed."""

    name = "gpu"

    def __init__(self, nvml: Nvml) -> None:
        self.nvml = nvml
        self.xids = XidWatch(nvml)
        self.hostname = socket.gethostname()

    def sample(self) -> list[GpuSample]:
        return sample_gpus(self.nvml, self.xids, self.hostname)

    @staticmethod
    def families(gpus: Sequence[GpuSample]) -> list[MetricFamily]:
        out = []
        for kind, table in (("gauge", _FAMILIES), ("counter", _COUNTERS)):
            for name, help, get in table:
                fam = MetricFamily(name, kind, help)
                for g in gpus:
                    fam.add(get(g), dcgm_labels(g))
                out.append(fam)
        out.append(clock_event_family(gpus))
        return [f for f in out if f.samples]
