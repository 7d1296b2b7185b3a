"""Host sampler: per-core CPU busy ratio and memory, from psutil.

One read of the per-CPU time counters per tick; the busy ratio is the delta of non-idle time over the delta of
all time since the previous tick (the first tick has no ratio). This costs two small procfs reads per second.

The hosttune_host_* series are always exported. The node_* series are off by default (`node_series`): a host that
runs node_exporter already has them, and two exporters of one name clash in a fleet. Turned on (daemon config
`telemetry.node_series: true`), they carry node_exporter 1.5's exact names, labels and meaning:
node_cpu_seconds_total{cpu,mode} (guest time is left out of the modes, as node_exporter counts it apart),
node_memory_{MemTotal,MemAvailable,SwapTotal,SwapFree}_bytes from /proc/meminfo, and node_load1.
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
    swap_total_bytes: int = 0
    swap_free_bytes: int = 0
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

    def __init__(self, node_series: bool = False) -> None:
        self._prev: list[dict[str, float]] | None = None
        self.node_series = node_series  # export node_exporter's names too (off: node_exporter's own job)

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
                          load1=float(psutil.getloadavg()[0]), swap_total_bytes=int(swap.total),
                          swap_free_bytes=int(swap.free))

    def families(self, s: HostSample) -> list[MetricFamily]:
        busy = MetricFamily("hosttune_host_cpu_busy_ratio", "gauge",
                            "Share of the last sampling interval each CPU was not idle (0..1).")
        for i, ratio in enumerate(s.cpu_busy_ratio):
            busy.add(ratio, {"cpu": str(i)})
        headroom = MetricFamily("hosttune_host_memory_headroom_ratio", "gauge",
                                "MemAvailable / MemTotal: the controller keeps this above the policy floor.")
        ours = [busy, headroom.add(s.mem_headroom_ratio)]
        return ours + node_families(s) if self.node_series else ours


def node_families(s: HostSample) -> list[MetricFamily]:
    """node_exporter 1.5's series for the same facts (cpu, meminfo and loadavg collectors)."""
    cpu = MetricFamily("node_cpu_seconds_total", "counter", "Seconds the CPUs spent in each mode.")
    for i, modes in enumerate(s.cpu_seconds):
        for mode, secs in modes.items():
            cpu.add(secs, {"cpu": str(i), "mode": mode})
    memory = [MetricFamily(f"node_memory_{field}_bytes", "gauge", f"Memory information field {field}_bytes.")
              .add(value) for field, value in (("MemTotal", s.mem_total_bytes), ("MemAvailable", s.mem_available_bytes),
                                               ("SwapTotal", s.swap_total_bytes), ("SwapFree", s.swap_free_bytes))]
    return [cpu, *memory, MetricFamily("node_load1", "gauge", "1m load average.").add(s.load1)]
