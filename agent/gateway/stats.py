"""Per-request measurements and the gateway's rolling figures (the controller's and Prometheus' view).

A RequestRecord is filled in by the proxy as a request moves through admission, the worker and back. GatewayStats
folds finished records into sliding windows (TTFT, inter-token latency, end-to-end, queue wait), rate windows
(output tokens/s, requests/s), cumulative counters and cumulative histograms. The windows' quantiles are the
controller's and the JSON API's view (one host, the last minute); the histograms are Prometheus' view (bucket counts
since start, which a fleet can sum). It is also the telemetry "gateway" sampler: `sample()` returns a
GatewaySnapshot, `families()` renders it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.metrics.histogram import Histogram, HistogramSnapshot
from agent.metrics.prom import MetricFamily, histogram_family
from agent.metrics.window import LatencyWindow, RateWindow, WindowSummary

OUTCOMES = ("ok", "error", "rejected", "timeout", "client_abort")

# Bucket bounds (seconds) of the exported histograms: the metric contract of issue 15. The shipped policies' SLOs
# (TTFT p95 0.5 s, 1 s, 2 s; ITL p95 50 ms) are bounds, so "share of requests within the SLO" is one bucket read.
TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300)
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


@dataclass
class RequestRecord:
    route: str
    stream: bool
    started: float                         # monotonic, when the gateway received the request
    queue_wait_s: float | None = None      # admission wait (queue + hold while the worker was not ready)
    ttft_s: float | None = None            # arrival -> first content chunk (stream) / first reply byte (not stream)
    itl_s: list[float] = field(default_factory=list)
    e2e_s: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    tokens_source: str | None = None       # "usage" | "timings" | "llamacpp" | "counted"
    content_chunks: int = 0
    outcome: str | None = None
    status: int | None = None
    retried: bool = False
    held_s: float = 0.0                    # part of queue_wait_s spent waiting for a worker that was not ready
    reject_reason: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class GatewaySnapshot:
    window_s: float
    ttft: WindowSummary
    itl: WindowSummary
    e2e: WindowSummary
    queue_wait: WindowSummary
    outcomes: dict[str, int]               # cumulative per outcome
    requests_total: int
    retries_total: int
    tokens_in_total: int
    tokens_out_total: int
    output_tokens_per_second: float        # over the window
    requests_per_second: float             # completed ok, over the window
    in_flight: int
    queued: int
    limit: int
    worker_ready: bool | None
    held_total: int = 0                    # requests that waited for a (re)starting worker, then went to it
    # cumulative since start, taken under one lock: TTFT, ITL, end-to-end, queue wait (Prometheus only, not JSON)
    histograms: tuple[HistogramSnapshot, ...] = ()


# (name, help) of GatewaySnapshot.histograms, in order
HISTOGRAMS = (
    ("hosttune_gateway_ttft_seconds", "Time to first token (first byte if not streamed) of served requests."),
    ("hosttune_gateway_itl_seconds", "Inter-token latency: one observation per gap between streamed chunks."),
    ("hosttune_gateway_request_duration_seconds", "End-to-end time of served requests."),
    ("hosttune_gateway_queue_wait_seconds", "Admission wait (queue and hold) of every request."),
)


class GatewayStats:
    """Thread-safe accumulator of finished requests."""

    name = "gateway"

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 recent: int = 200) -> None:
        self.window_s = window_s
        self.ttft = LatencyWindow(window_s, clock=clock)
        self.itl = LatencyWindow(window_s, max_samples=200_000, clock=clock)
        self.e2e = LatencyWindow(window_s, clock=clock)
        self.queue_wait = LatencyWindow(window_s, clock=clock)
        self.tokens_out_rate = RateWindow(window_s, clock=clock)
        self.requests_rate = RateWindow(window_s, clock=clock)
        self.outcomes: Counter[str] = Counter()
        self.retries_total = 0
        self.held_total = 0
        self.tokens_in_total = 0
        self.tokens_out_total = 0
        self.recent: deque[RequestRecord] = deque(maxlen=recent)
        self.ttft_hist = Histogram(TTFT_BUCKETS)
        self.itl_hist = Histogram(ITL_BUCKETS)
        self.e2e_hist = Histogram(DURATION_BUCKETS)
        self.queue_wait_hist = Histogram(QUEUE_WAIT_BUCKETS)
        self._lock = threading.Lock()
        # Gauges owned by others (admission gate, worker endpoint), read at snapshot time.
        self.gauges: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)
        self.worker_ready: Callable[[], bool | None] = lambda: None

    def finish(self, rec: RequestRecord) -> None:
        if rec.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {rec.outcome!r}")
        if rec.queue_wait_s is not None:
            self.queue_wait.observe(rec.queue_wait_s)
        if rec.outcome == "ok":
            if rec.ttft_s is not None:
                self.ttft.observe(rec.ttft_s)
            if rec.itl_s:
                self.itl.observe_many(rec.itl_s)
            if rec.e2e_s is not None:
                self.e2e.observe(rec.e2e_s)
            self.requests_rate.add(1)
        if rec.tokens_out:
            self.tokens_out_rate.add(rec.tokens_out)
        with self._lock:
            # same records as the windows above: queue wait of every request, latencies of served ones
            if rec.queue_wait_s is not None:
                self.queue_wait_hist.observe(rec.queue_wait_s)
            if rec.outcome == "ok":
                if rec.ttft_s is not None:
                    self.ttft_hist.observe(rec.ttft_s)
                self.itl_hist.observe_many(rec.itl_s)
                if rec.e2e_s is not None:
                    self.e2e_hist.observe(rec.e2e_s)
            self.outcomes[rec.outcome] += 1
            self.retries_total += int(rec.retried)
            self.held_total += int(rec.held_s > 0 and rec.outcome != "rejected")
            self.tokens_in_total += rec.tokens_in or 0
            self.tokens_out_total += rec.tokens_out or 0
            self.recent.append(rec)

    def recent_records(self) -> list[RequestRecord]:
        """A copy of the last finished records, oldest first, taken under the lock: the gateway thread appends to
        the deque while the API (GET /v1/performance) and the controller's feed read it, and iterating a deque
        that another thread mutates raises RuntimeError."""
        with self._lock:
            return list(self.recent)

    def sample(self) -> GatewaySnapshot:
        in_flight, queued, limit = self.gauges()
        with self._lock:
            outcomes = {o: self.outcomes.get(o, 0) for o in OUTCOMES}
            retries, t_in, t_out = self.retries_total, self.tokens_in_total, self.tokens_out_total
            held = self.held_total
            hists = (self.ttft_hist.snapshot(), self.itl_hist.snapshot(), self.e2e_hist.snapshot(),
                     self.queue_wait_hist.snapshot())
        return GatewaySnapshot(
            window_s=self.window_s, ttft=self.ttft.summary(), itl=self.itl.summary(), e2e=self.e2e.summary(),
            queue_wait=self.queue_wait.summary(), outcomes=outcomes, requests_total=sum(outcomes.values()),
            retries_total=retries, tokens_in_total=t_in, tokens_out_total=t_out,
            output_tokens_per_second=self.tokens_out_rate.rate(), requests_per_second=self.requests_rate.rate(),
            in_flight=in_flight, queued=queued, limit=limit, worker_ready=self.worker_ready(), held_total=held,
            histograms=hists)

    def families(self, s: GatewaySnapshot) -> list[MetricFamily]:
        hist_fams = [histogram_family(name, help, h) for (name, help), h in zip(HISTOGRAMS, s.histograms, strict=False)]
        requests = MetricFamily("hosttune_gateway_requests_total", "counter", "Finished requests by outcome.")
        for outcome, n in s.outcomes.items():
            requests.add(n, {"outcome": outcome})
        return [
            *hist_fams,
            requests,
            MetricFamily("hosttune_gateway_retries_total", "counter",
                         "Requests retried once after the worker failed before any byte reached the client.")
            .add(s.retries_total),
            MetricFamily("hosttune_gateway_held_total", "counter",
                         "Requests held while the worker was not ready (starting, restarting), then sent to it.")
            .add(s.held_total),
            MetricFamily("hosttune_gateway_prompt_tokens_total", "counter", "Prompt tokens of finished requests.")
            .add(s.tokens_in_total),
            MetricFamily("hosttune_gateway_completion_tokens_total", "counter",
                         "Output tokens of finished requests.").add(s.tokens_out_total),
            MetricFamily("hosttune_gateway_output_tokens_per_second", "gauge",
                         f"Output tokens per second over the last {s.window_s:g} s.").add(s.output_tokens_per_second),
            MetricFamily("hosttune_gateway_requests_per_second", "gauge",
                         f"Successful requests per second over the last {s.window_s:g} s.")
            .add(s.requests_per_second),
            MetricFamily("hosttune_gateway_in_flight", "gauge", "Requests sent to the worker now.").add(s.in_flight),
            MetricFamily("hosttune_gateway_queued", "gauge", "Requests waiting for admission now.").add(s.queued),
            MetricFamily("hosttune_gateway_admission_limit", "gauge",
                         "Most requests allowed in flight to the worker.").add(s.limit),
        ]
