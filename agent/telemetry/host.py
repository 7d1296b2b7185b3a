"""Host sampler: per-core CPU busy ratio and memory, from psutil.

One read of the per-CPU time counters per tick; the busy ratio is the delta of non-idle time over the delta of
all time since the previous tick (the first tick has no ratio). This costs two small procfs reads per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psutil

from agent.metrics.prom import MetricFamily

IDLE_FIELDS = ("idle", "iowait")


@dataclass(frozen=True)
class HostSample:
    cpu_seconds: list[dict[str, float]]        # per core, mode -> cumulative seconds (node_cpu_seconds_total)
    cpu_busy_ratio: list[float | None]         # per core, 0..1 since the previous sample
    mem_total_bytes: int
    mem_available_bytes: int
    swap_used_bytes: int
    load1: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_busy_ratio_avg(self) -> float | None:
        vals = [v for v in self.cpu_busy_ratio if v is not None]
        return sum(vals) / len(vals) if vals else None

    @property
    def mem_headroom_ratio(self) -> float:
        return self.mem_available_bytes / self.mem_total_bytes if self.mem_total_bytes else 0.0


def busy_ratio(prev: dict[str, float] | None, cur: dict[str, float]) -> float | None:
    """Share of non-idle time between two per-core counter snapshots; None without a previous one or no time."""
    if prev is None:
        return None
    total = sum(cur.values()) - sum(prev.values())
    if total <= 0:
        return None
    idle = sum(cur.get(k, 0.0) - prev.get(k, 0.0) for k in IDLE_FIELDS)
    return min(1.0, max(0.0, 1.0 - idle / total))


class HostSampler:
    name = "host"

    def __init__(self) -> None:
        self._prev: list[dict[str, float]] | None = None

    def sample(self) -> HostSample:
        per_cpu = [t._asdict() for t in psutil.cpu_times(percpu=True)]
        # guest time is already counted in user/nice on Linux; summing it again would inflate totals
        for t in per_cpu:
            t.pop("guest", None)
            t.pop("guest_nice", None)
        prev = self._prev
        ratios = [busy_ratio(prev[i] if prev is not None and i < len(prev) else None, cur)
                  for i, cur in enumerate(per_cpu)]
        self._prev = per_cpu
        vm = psutil.virtual_memory()
        swap = psutil.swap_memory()
        return HostSample(cpu_seconds=per_cpu, cpu_busy_ratio=ratios, mem_total_bytes=int(vm.total),
                          mem_available_bytes=int(vm.available), swap_used_bytes=int(swap.used),
                          load1=float(psutil.getloadavg()[0]))

    @staticmethod
    def families(s: HostSample) -> list[MetricFamily]:
        cpu = MetricFamily("node_cpu_seconds_total", "counter", "Seconds the CPUs spent in each mode.")
        busy = MetricFamily("hosttune_host_cpu_busy_ratio", "gauge",
                            "Share of the last sampling interval each CPU was not idle (0..1).")
        for i, modes in enumerate(s.cpu_seconds):
            for mode, secs in modes.items():
                cpu.add(secs, {"cpu": str(i), "mode": mode})
            busy.add(s.cpu_busy_ratio[i], {"cpu": str(i)})
        return [
            cpu, busy,
            MetricFamily("node_memory_MemTotal_bytes", "gauge", "Memory information field MemTotal_bytes.")
            .add(s.mem_total_bytes),
            MetricFamily("node_memory_MemAvailable_bytes", "gauge", "Memory information field MemAvailable_bytes.")
            .add(s.mem_available_bytes),
            MetricFamily("node_memory_SwapUsed_bytes", "gauge", "Swap in use, bytes.").add(s.swap_used_bytes),
            MetricFamily("node_load1", "gauge", "1m load average.").add(s.load1),
            MetricFamily("hosttune_host_memory_headroom_ratio", "gauge",
                         "MemAvailable / MemTotal: the controller keeps this above the policy floor.")
            .add(s.mem_headroom_ratio),
        ]
