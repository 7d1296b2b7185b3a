"""The telemetry loop: run each sampler once a second, keep the results in a ring, export them for Prometheus.

One sampler's failure is contained: its part of the sample is None, the error is kept on the sample and exported
as hosttune_telemetry_sampler_success{sampler=...} 0, and the other samplers still run (node_exporter's rule).
The daemon owns the APScheduler scheduler; `register_jobs(scheduler)` adds the 1 Hz job to it. Each sample records
the CPU time it cost, so the idle budget (<= 0.5% of a core at 1 Hz, i.e. 5 ms per sample) is observable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from agent.gateway.stats import GatewaySnapshot, GatewayStats
from agent.gpu.nvml import Nvml
from agent.metrics.prom import Exposition, MetricFamily
from agent.metrics.ring import RingBuffer
from agent.telemetry.gpu import GpuSample, GpuSampler
from agent.telemetry.host import HostSample, HostSampler
from agent.telemetry.worker import WorkerSample, WorkerSampler

log = logging.getLogger(__name__)
JOB_ID = "telemetry"  # the daemon reschedules this id when telemetry_interval_s changes
SCRAPE_MAX_AGE_S = 2.5  # a scrape renders the latest sample if it is younger than this, else samples now


class FamilySource(Protocol):
    """A part read at each exposition rather than sampled into the ring (the daemon's state: daemon_state.py)."""

    def families(self) -> list[MetricFamily]: ...


@dataclass(frozen=True)
class TelemetrySample:
    t: float                               # wall clock (Unix seconds)
    mono: float                            # monotonic, for intervals
    host: HostSample | None = None
    worker: WorkerSample | None = None
    gateway: GatewaySnapshot | None = None
    gpus: list[GpuSample] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    cpu_cost_s: float = 0.0                # CPU time this sample cost the sampling thread


class Telemetry:
    def __init__(self, host: HostSampler | None = None, worker: WorkerSampler | None = None,
                 gateway: GatewayStats | None = None, gpu: GpuSampler | None = None, capacity: int = 600,
                 clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.worker = worker
        self.gateway = gateway
        self.gpu = gpu
        self.ring: RingBuffer[TelemetrySample] = RingBuffer(capacity)
        self._clock = clock
        self.parts: list[FamilySource] = []
        self._exposition = Exposition(self._scrape_families)

    def _run(self, sampler: Any, errors: dict[str, str]) -> Any:
        if sampler is None:
            return None
        try:
            return sampler.sample()
        except Exception as e:  # contained: one broken sampler must not stop the others
            log.warning("telemetry sampler %s failed: %s", sampler.name, e)
            errors[sampler.name] = f"{type(e).__name__}: {e}"
            return None

    def sample_once(self) -> TelemetrySample:
        cpu0 = time.thread_time()
        errors: dict[str, str] = {}
        host = self._run(self.host, errors)
        worker = self._run(self.worker, errors)
        gateway = self._run(self.gateway, errors)
        gpus = self._run(self.gpu, errors) or []
        sample = TelemetrySample(t=self._clock(), mono=time.monotonic(), host=host, worker=worker,
                                 gateway=gateway, gpus=gpus, errors=errors, cpu_cost_s=time.thread_time() - cpu0)
        self.ring.append(sample)
        return sample

    def latest(self) -> TelemetrySample | None:
        return self.ring.latest()

    def history(self, seconds: float | None = None) -> list[TelemetrySample]:
        if seconds is None:
            return self.ring.items()
        horizon = time.monotonic() - seconds
        return self.ring.items(lambda s: s.mono >= horizon)

    def recent(self, seconds: float | None = None) -> list[dict[str, Any]]:
        """The last `seconds` of samples as JSON-able dicts (for the API and `hosttune status`)."""
        return [sample_to_dict(s) for s in self.history(seconds)]

    def families(self, sample: TelemetrySample) -> list[MetricFamily]:
        fams: list[MetricFamily] = []
        if sample.host is not None and self.host is not None:
            fams += self.host.families(sample.host)
        if sample.worker is not None and self.worker is not None:
            fams += self.worker.families(sample.worker)
        if sample.gateway is not None and self.gateway is not None:
            fams += self.gateway.families(sample.gateway)
        if sample.gpus:
            fams += GpuSampler.families(sample.gpus)
        for part in self.parts:
            fams += part.families()
        ok = MetricFamily("hosttune_telemetry_sampler_success", "gauge",
                          "1 if the sampler succeeded at the last sample, 0 if it failed.")
        for s in (self.host, self.worker, self.gateway, self.gpu):
            if s is not None:
                ok.add(0 if s.name in sample.errors else 1, {"sampler": s.name})
        fams.append(ok)
        fams.append(MetricFamily("hosttune_telemetry_sample_cpu_seconds", "gauge",
                                 "CPU time the last telemetry sample cost.").add(sample.cpu_cost_s))
        fams.append(MetricFamily("hosttune_telemetry_last_sample_timestamp_seconds", "gauge",
                                 "When the last sample was taken (Unix time).").add(sample.t))
        return fams

    def _scrape_families(self) -> list[MetricFamily]:
        """The latest sample's families; samples now if the ring is empty or stale (no scheduler)."""
        sample = self.latest()
        if sample is None or time.monotonic() - sample.mono > SCRAPE_MAX_AGE_S:
            sample = self.sample_once()
        return self.families(sample)

    def exposition(self) -> str:
        """Prometheus text of the latest sample (prometheus_client, through this telemetry's private registry)."""
        return self._exposition.text()

    def register_jobs(self, scheduler: Any, interval_s: float = 1.0) -> Any:
        """Add the sampling job to an APScheduler 3.x scheduler (BackgroundScheduler in the daemon).
        coalesce + max_instances=1: a slow tick is skipped, never stacked."""
        return scheduler.add_job(self.sample_once, "interval", seconds=interval_s, id=JOB_ID, name="telemetry",
                                 coalesce=True, max_instances=1, misfire_grace_time=max(1, int(interval_s)),
                                 replace_existing=True)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


def sample_to_dict(sample: TelemetrySample) -> dict[str, Any]:
    """JSON-able form: quantile keys become "p50"/"p95"/"p99", per-core CPU counters are left out (large and
    only useful as Prometheus counters)."""
    out = asdict(sample)
    if out.get("host"):
        out["host"].pop("cpu_seconds", None)
    gw = out.get("gateway")
    if gw:
        gw.pop("histograms", None)  # cumulative buckets are for /metrics; the JSON keeps the windowed quantiles
        for name in ("ttft", "itl", "e2e", "queue_wait"):
            w = gw[name]
            gw[name] = {"count": w["count"], "mean": w["mean"],
                        **{f"p{round(q * 100)}": v for q, v in w["quantiles"].items()}}
    return out


def build_telemetry(endpoint: Any = None, gateway: GatewayStats | None = None, gpu: Nvml | None = None,
                    capacity: int = 600) -> Telemetry:
    """The usual assembly: host always; worker when an endpoint is given; gateway stats when given; GPU when an
    NVML session is handed in (without NVML on the host its samples are empty, never an error)."""
    gpu_sampler = GpuSampler(gpu) if gpu is not None else None
    return Telemetry(host=HostSampler(), worker=WorkerSampler(endpoint) if endpoint is not None else None,
                     gateway=gateway, gpu=gpu_sampler, capacity=capacity)
