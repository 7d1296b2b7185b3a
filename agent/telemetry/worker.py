"""Worker sampler: the worker's own `/metrics` (Prometheus text) and `/slots`, turned into rates.

Two dialects: llama-server's `llamacpp:*` and hosttune's torch worker's `torch:*` (the same figures with the same
meaning, plus the KV cache against its live budget, the live max batch and out-of-memory counts); which one a
worker speaks is read from its exposition, so a reload that swaps the engine needs no re-wiring.

llama-server exports cumulative counters (prompt tokens, predicted tokens) and a few gauges (requests processing,
deferred). We keep the previous sample and derive tokens/s from the counter deltas; a counter that went down means
the worker restarted, so that interval has no rate. `/slots` gives the slot count and how many are busy; a worker
started with --no-slots answers 501 and the slot fields stay None. It has no KV-usage and no latency metrics: those
come from the gateway.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, cast

import httpx
import psutil

from agent.errors import InputError
from agent.gateway.upstream import WorkerEndpoint
from agent.metrics.prom import MetricFamily, parse_text, sample_value
from agent.worker.replycap import read_reply
from agent.worker.smaps import WorkerMemory

# The most the sampler reads of the worker's /metrics and /slots, and how long one sample may take in all: a worker
# (unprivileged, perhaps compromised) that answers with an endless or trickled body must not grow the root daemon's
# memory or hold the sampler. Bodies are asked for and read raw (no gzip: no decompression bomb).
# /metrics is ~3 KB from llama-server; 256 KiB bounds what prometheus_client's parser may be made to chew on a
# hostile body (quadratic per line in escaped quotes, lines capped at agent.metrics.prom.MAX_LINE_CHARS).
MAX_METRICS_BYTES = 256 << 10
MAX_SLOTS_BYTES = 1 << 20
SAMPLE_DEADLINE_S = 2.0

# llama-server metric -> our field
LLAMACPP_FIELDS = {
    "llamacpp:prompt_tokens_total": "prompt_tokens_total",
    "llamacpp:tokens_predicted_total": "predicted_tokens_total",
    "llamacpp:prompt_seconds_total": "prompt_seconds_total",
    "llamacpp:tokens_predicted_seconds_total": "predicted_seconds_total",
    "llamacpp:n_decode_total": "decode_calls_total",
    "llamacpp:requests_processing": "requests_processing",
    "llamacpp:requests_deferred": "requests_deferred",
    "llamacpp:n_busy_slots_per_decode": "busy_slots_per_decode",
}
# The torch worker (agent.worker.torch_server.metrics): the same names under "torch:", and its own figures.
TORCH_PREFIX = "torch:"
TORCH_FIELDS = {TORCH_PREFIX + name.removeprefix("llamacpp:"): ours for name, ours in LLAMACPP_FIELDS.items()}
TORCH_FIELDS.update({
    "torch:kv_cache_tokens": "kv_cache_tokens",
    "torch:kv_cache_budget_tokens": "kv_cache_budget_tokens",
    "torch:kv_cache_usage_ratio": "kv_cache_usage_ratio",
    "torch:max_batch": "max_batch",
    "torch:oom_total": "oom_total",
    "torch:requests_requeued_total": "requests_requeued_total",
})
# hosttune_worker_memory_bytes{kind=...} <- the supervisor's latest smaps_rollup reading (agent/worker/smaps.py)
MEMORY_KINDS = {"rss": "rss_bytes", "pss": "pss_bytes", "anonymous": "anonymous_bytes",
                "anon_huge": "anon_huge_bytes", "file_pmd": "file_pmd_bytes", "hugetlb": "hugetlb_bytes",
                "locked": "locked_bytes", "swap": "swap_bytes"}


def memory_fields(mem: WorkerMemory | None) -> dict[str, Any]:
    """WorkerSample's memory fields from a smaps_rollup reading (empty: no reading, or a failed one)."""
    if mem is None or mem.error is not None:
        return {}
    kinds = {kind: getattr(mem, f) for kind, f in MEMORY_KINDS.items() if getattr(mem, f) is not None}
    return {"memory_bytes": kinds, "weights_in_huge_pages": mem.weights_in_huge_pages}


@dataclass(frozen=True)
class WorkerSample:
    t: float                                   # monotonic time of the sample
    up: bool                                   # /metrics answered
    ready: bool                                # the endpoint says it serves requests
    prompt_tokens_total: float | None = None
    predicted_tokens_total: float | None = None
    prompt_seconds_total: float | None = None
    predicted_seconds_total: float | None = None
    decode_calls_total: float | None = None
    requests_processing: float | None = None
    requests_deferred: float | None = None
    busy_slots_per_decode: float | None = None
    kv_cache_tokens: float | None = None       # torch worker only (llama-server exports no KV usage)
    kv_cache_budget_tokens: float | None = None
    kv_cache_usage_ratio: float | None = None
    max_batch: float | None = None
    oom_total: float | None = None
    requests_requeued_total: float | None = None
    engine: str | None = None                  # "llamacpp" | "torch": the dialect its /metrics spoke
    tokens_per_second: float | None = None     # predicted tokens per wall second since the previous sample
    prompt_tokens_per_second: float | None = None
    slots_total: int | None = None
    slots_busy: int | None = None
    slot_ctx: int | None = None
    rss_bytes: int | None = None
    cpu_seconds_total: float | None = None
    memory_bytes: dict[str, int] | None = None    # smaps_rollup by kind (MEMORY_KINDS), sampled by the supervisor
    weights_in_huge_pages: float | None = None    # (hugetlb + anon huge + file PMD) / model file size
    error: str | None = None


def parse_llamacpp_metrics(text: str, t: float) -> WorkerSample:
    """Kept for callers that know they talk to llama-server; parse_worker_metrics reads either dialect."""
    return parse_worker_metrics(text, t, source="llama-server /metrics")


def parse_worker_metrics(text: str, t: float, source: str = "worker /metrics") -> WorkerSample:
    fams = parse_text(text, source=source)
    torch = any(name.startswith(TORCH_PREFIX) for name in fams)
    fields = TORCH_FIELDS if torch else LLAMACPP_FIELDS
    values = {ours: sample_value(fams, theirs) for theirs, ours in fields.items()}
    return WorkerSample(t=t, up=True, ready=True, engine="torch" if torch else "llamacpp",
                        **cast(dict[str, Any], values))


def parse_slots(slots: Any) -> tuple[int, int, int | None]:
    """(total, busy, n_ctx of a slot) from llama-server's /slots JSON array."""
    if not isinstance(slots, list):
        raise InputError("/slots did not return a JSON array")
    busy = sum(1 for s in slots if isinstance(s, dict) and s.get("is_processing"))
    ctx = next((int(s["n_ctx"]) for s in slots if isinstance(s, dict) and "n_ctx" in s), None)
    return len(slots), busy, ctx


def with_rates(cur: WorkerSample, prev: WorkerSample | None) -> WorkerSample:
    """Fill tokens/s from counter deltas; a restart (counter went down) or no previous sample gives None."""
    if prev is None or not prev.up or not cur.up or cur.t <= prev.t:
        return cur
    dt = cur.t - prev.t

    def rate(a: float | None, b: float | None) -> float | None:
        if a is None or b is None or a < b:
            return None
        return (a - b) / dt

    return replace(cur, tokens_per_second=rate(cur.predicted_tokens_total, prev.predicted_tokens_total),
                   prompt_tokens_per_second=rate(cur.prompt_tokens_total, prev.prompt_tokens_total))


class WorkerSampler:
    name = "worker"

    def __init__(self, endpoint: WorkerEndpoint, timeout_s: float = 0.5, slots: bool = True,
                 pid: Callable[[], int | None] | None = None, clock: Callable[[], float] = time.monotonic,
                 memory: Callable[[], WorkerMemory | None] | None = None) -> None:
        self.endpoint = endpoint
        self.memory = memory  # the supervisor's latest smaps_rollup reading (it samples at its own, slower rate)
        self.timeout_s = timeout_s
        self.slots = slots
        self.pid = pid or getattr(endpoint, "pid", None)
        self._clock = clock
        self._http: httpx.Client | None = None  # made at the first sample with a worker URL (an idle daemon
        self._prev: WorkerSample | None = None   # without a worker does not carry a TLS context for nothing)

    @property
    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(timeout=self.timeout_s, trust_env=False)
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def _get(self, url: str, limit: int, deadline: float) -> tuple[int, bytes]:
        """(status, body) of a GET, the body read raw up to `limit` bytes and until `deadline` (monotonic)."""
        return read_reply(self._client, "GET", url, limit, max(0.0, deadline - time.monotonic()))

    def _process(self) -> tuple[int | None, float | None]:
        pid = self.pid() if callable(self.pid) else None
        if not pid:
            return None, None
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                cpu = proc.cpu_times()
                return int(proc.memory_info().rss), float(cpu.user + cpu.system)
        except (psutil.Error, OSError):
            return None, None

    def sample(self) -> WorkerSample:
        now = self._clock()
        url = self.endpoint.base_url()
        ready = self.endpoint.is_ready()
        rss, cpu = self._process()
        if not url:
            cur = WorkerSample(t=now, up=False, ready=ready, rss_bytes=rss, cpu_seconds_total=cpu,
                               error="no worker URL")
            self._prev = cur
            return cur
        deadline = time.monotonic() + SAMPLE_DEADLINE_S
        try:
            status, body = self._get(url + "/metrics", MAX_METRICS_BYTES, deadline)
            if status != 200:
                raise InputError(f"/metrics answered HTTP {status} (start llama-server with --metrics)")
            cur = replace(parse_worker_metrics(body.decode("utf-8", "replace"), now), ready=ready, rss_bytes=rss,
                          cpu_seconds_total=cpu)
            if self.slots and cur.engine == "llamacpp":
                status, body = self._get(url + "/slots", MAX_SLOTS_BYTES, deadline)
                if status == 200:
                    total, busy, ctx = parse_slots(json.loads(body))
                    cur = replace(cur, slots_total=total, slots_busy=busy, slot_ctx=ctx)
        except (httpx.HTTPError, InputError, ValueError, TypeError, OverflowError, RecursionError) as e:
            cur = WorkerSample(t=now, up=False, ready=ready, rss_bytes=rss, cpu_seconds_total=cpu,
                               error=str(e) or type(e).__name__)
        if self.memory is not None:
            cur = replace(cur, **memory_fields(self.memory()))
        cur = with_rates(cur, self._prev)
        self._prev = cur
        return cur

    @staticmethod
    def families(s: WorkerSample) -> list[MetricFamily]:
        def g(name: str, help: str, value: float | int | None) -> MetricFamily:
            return MetricFamily(name, "gauge", help).add(value)

        def c(name: str, help: str, value: float | int | None) -> MetricFamily:
            return MetricFamily(name, "counter", help).add(value)

        memory = MetricFamily("hosttune_worker_memory_bytes", "gauge", "Worker memory by kind, from its "
                              "smaps_rollup: rss, pss, anonymous, anon_huge (THP), file_pmd, hugetlb, locked, swap.")
        for kind, value in (s.memory_bytes or {}).items():
            memory.add(value, {"kind": kind})
        return [
            g("hosttune_worker_up", "1 when the worker's /metrics answered at the last sample.", int(s.up)),
            g("hosttune_worker_ready", "1 when the worker serves requests (not starting or restarting).",
              int(s.ready)),
            g("hosttune_worker_tokens_per_second", "Output tokens generated per second over the last interval.",
              s.tokens_per_second),
            g("hosttune_worker_prompt_tokens_per_second", "Prompt tokens processed per second over the last "
              "interval (excluding cached).", s.prompt_tokens_per_second),
            c("hosttune_worker_predicted_tokens_total", "Output tokens generated (llamacpp:/torch:"
              "tokens_predicted_total).", s.predicted_tokens_total),
            c("hosttune_worker_prompt_tokens_total", "Prompt tokens processed (llamacpp:/torch:prompt_tokens_total).",
              s.prompt_tokens_total),
            g("hosttune_worker_requests_processing", "Requests the worker is processing.", s.requests_processing),
            g("hosttune_worker_requests_deferred", "Requests the worker deferred (no free slot).",
              s.requests_deferred),
            g("hosttune_worker_busy_slots_per_decode", "Average busy slots per decode call.",
              s.busy_slots_per_decode),
            g("hosttune_worker_slots", "Parallel slots (-np).", s.slots_total),
            g("hosttune_worker_slots_busy", "Slots processing a request now.", s.slots_busy),
            g("hosttune_worker_slot_context_tokens", "Context size of one slot.", s.slot_ctx),
            g("hosttune_worker_kv_cache_tokens", "KV-cache tokens of the running sequences (torch worker).",
              s.kv_cache_tokens),
            g("hosttune_worker_kv_cache_budget_tokens", "Live KV-cache budget in tokens (torch worker; absent: none).",
              s.kv_cache_budget_tokens),
            g("hosttune_worker_kv_cache_usage_ratio", "KV-cache tokens / budget (torch worker).",
              s.kv_cache_usage_ratio),
            g("hosttune_worker_max_batch", "Live max batch (torch worker).", s.max_batch),
            c("hosttune_worker_oom_total", "Out-of-memory events the worker caught and recovered from (torch).",
              s.oom_total),
            c("hosttune_worker_requests_requeued_total", "Running requests sent back to the worker's queue (torch).",
              s.requests_requeued_total),
            g("hosttune_worker_resident_memory_bytes", "Worker process RSS.", s.rss_bytes),
            memory,
            g("hosttune_worker_weights_huge_pages_ratio", "Share of the model file's size the worker holds in huge "
              "pages: (hugetlb + anon huge + file PMD-mapped) / model size, at most 1.", s.weights_in_huge_pages),
            c("hosttune_worker_cpu_seconds_total", "Worker process CPU time (user+system).", s.cpu_seconds_total),
        ]
