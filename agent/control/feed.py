"""Live ticks: the requests the gateway finished since the last tick (its per-request records), its gauges, and
the memory headroom (the telemetry ring's latest host/GPU sample, or psutil when telemetry is not running).

The gateway keeps its last N records in a deque (GatewayStats.recent, copied under its lock by recent_records());
the feed remembers the last record it saw and takes everything after it. If that record has already been pushed
out, some requests were missed: the tick says how many could not be accounted for (`missed`), so a window never
silently undercounts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psutil

from agent.control.observe import Finished, Tick

TERMINAL = ("ok", "error", "rejected", "timeout", "client_abort")


def finished_from_record(rec: Any, now: float) -> Finished:
    e2e = rec.e2e_s
    at = rec.started + e2e if e2e is not None else now
    return Finished(at=at, outcome=rec.outcome, ttft_s=rec.ttft_s, queue_wait_s=rec.queue_wait_s,
                    e2e_s=e2e if e2e is not None else max(0.0, now - rec.started), tokens_out=rec.tokens_out or 0,
                    itl_s=tuple(rec.itl_s))


class GatewayFeed:
    """Reads a GatewayStats (agent.gateway.stats) and, optionally, a Telemetry store for memory."""

    def __init__(self, stats: Any, telemetry: Any = None, clock: Callable[[], float] = time.monotonic,
                 gpu_index: int | None = None, watch_gpu: bool = True) -> None:
        self.stats = stats
        self.watch_gpu = watch_gpu
        self.telemetry = telemetry
        self.clock = clock
        self.gpu_index = gpu_index
        self._last: Any = None
        self._total_seen: int | None = None

    def _new_records(self) -> tuple[list[Any], int]:
        records = self.stats.recent_records()  # copied under the stats lock: the gateway thread appends
        total = sum(self.stats.outcomes.values())
        if self._total_seen is None:
            # First read: start from now; what finished before the controller existed is not its business.
            self._last = records[-1] if records else None
            self._total_seen = total
            return [], 0
        idx = None if self._last is None else next(
            (i for i in range(len(records) - 1, -1, -1) if records[i] is self._last), None)
        new = records if idx is None else records[idx + 1:]
        if new:
            self._last = new[-1]
        expected = total - self._total_seen
        self._total_seen = total
        return new, max(0, expected - len(new))

    def memory(self) -> tuple[float | None, float | None]:
        host_pct: float | None = None
        gpu_pct: float | None = None
        sample = self.telemetry.latest() if self.telemetry is not None else None
        if sample is not None and sample.host is not None:
            host_pct = sample.host.mem_headroom_ratio * 100
        if self.watch_gpu and sample is not None and sample.gpus:
            fracs = [g.mem_free_bytes / g.mem_total_bytes for g in sample.gpus
                     if g.mem_free_bytes is not None and g.mem_total_bytes
                     and (self.gpu_index is None or g.index == self.gpu_index)]
            gpu_pct = min(fracs) * 100 if fracs else None
        if host_pct is None:
            vm = psutil.virtual_memory()
            host_pct = vm.available / vm.total * 100 if vm.total else None
        return host_pct, gpu_pct

    def read(self) -> Tick:
        now = self.clock()
        records, missed = self._new_records()
        in_flight, queued, limit = self.stats.gauges()
        ready = self.stats.worker_ready()
        host_pct, gpu_pct = self.memory()
        fin = tuple(finished_from_record(r, now) for r in records if r.outcome in TERMINAL)
        return Tick(t=now, finished=fin, queued=queued, in_flight=in_flight, limit=limit,
                    worker_ready=bool(ready) if ready is not None else True, mem_headroom_pct=host_pct,
                    gpu_free_pct=gpu_pct, missed=missed)
