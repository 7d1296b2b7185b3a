"""GPU telemetry in dcgm-exporter's names, from whatever GPU sampler the host has.

The NVML sampling itself lives in agent/telemetry/gpu.py (owned by the GPU/NVML work); this module only turns
its per-GPU readings into a normalized GpuSample and Prometheus families. Readings may be objects or dicts; the
field names accepted for each value are listed in FIELD_ALIASES. No GPU sampler, no NVML, or no GPU: no GPU
families ("no data here"), never an error.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.telemetry.prom import MetricFamily

log = logging.getLogger(__name__)

FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "index": ("index", "gpu", "minor"),
    "uuid": ("uuid", "UUID"),
    "name": ("name", "model", "model_name"),
    "util_pct": ("util_pct", "gpu_util_pct", "utilization_gpu", "gpu_util", "util"),
    "mem_util_pct": ("mem_util_pct", "utilization_memory", "mem_util"),
    "mem_used_bytes": ("mem_used_bytes", "memory_used_bytes", "fb_used_bytes"),
    "mem_total_bytes": ("mem_total_bytes", "memory_total_bytes", "fb_total_bytes"),
    "mem_free_bytes": ("mem_free_bytes", "memory_free_bytes", "fb_free_bytes"),
    "sm_clock_mhz": ("sm_clock_mhz", "clock_sm_mhz", "graphics_clock_mhz", "sm_clock"),
    "mem_clock_mhz": ("mem_clock_mhz", "clock_mem_mhz", "memory_clock_mhz", "mem_clock"),
    "power_w": ("power_w", "power_watts", "power_usage_w"),
    "power_mw": ("power_mw", "power_usage_mw"),
    "power_limit_w": ("power_limit_w",),
    "power_limit_mw": ("power_limit_mw", "enforced_power_limit_mw"),
    "temp_c": ("temp_c", "temperature_c", "gpu_temp_c"),
    "throttle_reasons": ("throttle_reasons", "clocks_event_reasons", "clock_throttle_reasons"),
}
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


def _get(reading: Any, key: str) -> Any:
    for alias in FIELD_ALIASES[key]:
        value = reading.get(alias) if isinstance(reading, dict) else getattr(reading, alias, None)
        if value is not None:
            return value
    return None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _watts(reading: Any, w_key: str, mw_key: str) -> float | None:
    watts = _num(_get(reading, w_key))
    if watts is None and (mw := _num(_get(reading, mw_key))) is not None:
        watts = mw / 1000.0
    return watts


def normalize(reading: Any, position: int) -> GpuSample:
    used, total, free, throttle = (_num(_get(reading, k)) for k in ("mem_used_bytes", "mem_total_bytes",
                                                                     "mem_free_bytes", "throttle_reasons"))
    if free is None and used is not None and total is not None:
        free = total - used
    index = _num(_get(reading, "index"))
    uuid, name = _get(reading, "uuid"), _get(reading, "name")
    return GpuSample(
        index=int(index) if index is not None else position,
        uuid=str(uuid) if uuid is not None else None, name=str(name) if name is not None else None,
        util_pct=_num(_get(reading, "util_pct")), mem_util_pct=_num(_get(reading, "mem_util_pct")),
        mem_used_bytes=None if used is None else int(used), mem_total_bytes=None if total is None else int(total),
        mem_free_bytes=None if free is None else int(free),
        sm_clock_mhz=_num(_get(reading, "sm_clock_mhz")), mem_clock_mhz=_num(_get(reading, "mem_clock_mhz")),
        power_w=_watts(reading, "power_w", "power_mw"),
        power_limit_w=_watts(reading, "power_limit_w", "power_limit_mw"), temp_c=_num(_get(reading, "temp_c")),
        throttle_reasons=None if throttle is None else int(throttle))


def default_source() -> Callable[[], Sequence[Any]] | None:
    """agent.telemetry.gpu.sample_gpus when it exists, called with no argument or with the shared NVML funnel
    (agent.nvml); None when there is no GPU sampler on this install."""
    try:
        mod = importlib.import_module("agent.telemetry.gpu")
    except ImportError:
        return None
    fn = getattr(mod, "sample_gpus", None)
    if not callable(fn):
        return None
    try:
        required = [p for p in inspect.signature(fn).parameters.values()
                    if p.default is inspect.Parameter.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        required = []
    if not required:
        return fn
    try:
        nvml_mod = importlib.import_module("agent.nvml")
    except ImportError:
        return None
    factory = next((getattr(nvml_mod, n) for n in ("default_nvml", "get_nvml", "Nvml", "NVML")
                    if callable(getattr(nvml_mod, n, None))), None)
    if factory is None:
        return None
    nvml = factory()
    return lambda: fn(nvml)


class GpuSampler:
    name = "gpu"

    def __init__(self, source: Callable[[], Sequence[Any]]) -> None:
        self.source = source

    def sample(self) -> list[GpuSample]:
        return [normalize(r, i) for i, r in enumerate(self.source() or [])]

    @staticmethod
    def families(gpus: Sequence[GpuSample]) -> list[MetricFamily]:
        spec = [
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
        out = []
        for name, help, get in spec:
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
