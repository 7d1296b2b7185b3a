"""What the controller sees: one Tick per control interval (the requests that finished since the last tick plus the
gateway's gauges and the memory headroom), and Measurements over a span of ticks.

Why its own windows instead of the gateway's 60 s percentiles: a decision must be judged on requests served *after*
it, so the control law needs windows that start where it says (after a limit change, after a restart has settled),
not a sliding minute that still holds the old regime. The per-request records make that exact.

Two TTFTs: `ttft_s` is what the client felt (gateway arrival to first token, admission wait included);
`service_ttft_s` leaves out the gateway's admission wait and is what the engine's concurrency decides. The
admission limit moves waiting between the gateway queue and the engine, so it is steered by the service TTFT.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.metrics.window import percentile


@dataclass(frozen=True)
class Finished:
    """One request the gateway finished."""

    at: float                         # monotonic time it finished
    outcome: str                      # ok | error | rejected | timeout | client_abort
    ttft_s: float | None = None
    queue_wait_s: float | None = None
    e2e_s: float | None = None
    tokens_out: int = 0
    itl_s: tuple[float, ...] = ()

    @property
    def service_ttft_s(self) -> float | None:
        if self.ttft_s is None:
            return None
        return max(0.0, self.ttft_s - (self.queue_wait_s or 0.0))

    @property
    def admitted_at(self) -> float:
        """When the request entered the engine (gateway arrival + admission wait)."""
        start = self.at - (self.e2e_s or 0.0)
        return start + (self.queue_wait_s or 0.0)


@dataclass(frozen=True)
class Tick:
    """The controller's input at one instant."""

    t: float                          # monotonic seconds (relative in recorded traces)
    finished: tuple[Finished, ...] = ()
    queued: int = 0                   # waiting for admission in the gateway
    in_flight: int = 0                # sent to the worker
    limit: int = 1                    # admission limit in force
    worker_ready: bool = True
    mem_headroom_pct: float | None = None   # host MemAvailable / MemTotal, percent
    gpu_free_pct: float | None = None       # least free GPU memory, percent
    missed: int = 0                   # finished requests the feed could not see (its buffer overflowed)


@dataclass(frozen=True)
class Measurement:
    """Figures over the requests that finished within (start, end]."""

    start: float
    end: float
    ok: int
    failed: int
    tokens_out: int
    tokens_per_s: float
    ttft_p95_s: float | None
    service_ttft_p95_s: float | None
    itl_p95_s: float | None
    queued_avg: float
    saturated_ratio: float            # share of ticks with requests waiting (gateway queue, or engine over capacity)
    ready_ratio: float                # share of ticks with the worker ready
    ticks: int

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    def as_dict(self) -> dict[str, Any]:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000, 1)

        return {"window_s": round(self.duration_s, 2), "requests_ok": self.ok, "requests_failed": self.failed,
                "tokens_out": self.tokens_out, "tokens_per_s": round(self.tokens_per_s, 2),
                "ttft_p95_ms": ms(self.ttft_p95_s), "service_ttft_p95_ms": ms(self.service_ttft_p95_s),
                "itl_p95_ms": ms(self.itl_p95_s), "queued_avg": round(self.queued_avg, 2),
                "saturated_ratio": round(self.saturated_ratio, 3), "ready_ratio": round(self.ready_ratio, 3)}


def p95(values: Iterable[float]) -> float | None:
    return percentile(sorted(values), 0.95)


def measure(ticks: Sequence[Tick], start: float, end: float, admitted_after: float | None = None,
            capacity: int | None = None) -> Measurement:
    """Figures over (start, end]. With `admitted_after`, latency percentiles count only requests that entered the
    engine after that instant (so a decision is judged on what it governed); throughput counts every finish.
    A tick is saturated when requests wait in the gateway's queue, or, given the engine's `capacity` (its slots or
    max batch), when more requests are in flight than it serves at once (they wait inside the engine)."""
    inside = [t for t in ticks if start < t.t <= end]
    done = [f for t in inside for f in t.finished if start < f.at <= end]
    ok = [f for f in done if f.outcome == "ok"]
    judged = ok if admitted_after is None else [f for f in ok if f.admitted_at >= admitted_after]
    span = max(end - start, 1e-9)
    tokens = sum(f.tokens_out for f in ok)
    n = len(inside)
    return Measurement(
        start=start, end=end, ok=len(judged), failed=sum(1 for f in done if f.outcome != "ok"), tokens_out=tokens,
        tokens_per_s=tokens / span,
        ttft_p95_s=p95(f.ttft_s for f in judged if f.ttft_s is not None),
        service_ttft_p95_s=p95(s for f in judged if (s := f.service_ttft_s) is not None),
        itl_p95_s=p95(g for f in judged for g in f.itl_s),
        queued_avg=sum(t.queued for t in inside) / n if n else 0.0,
        saturated_ratio=sum(1 for t in inside if t.queued > 0 or (capacity is not None and t.in_flight > capacity))
        / n if n else 0.0,
        ready_ratio=sum(1 for t in inside if t.worker_ready) / n if n else 0.0,
        ticks=n)


# ----- JSON form (recorded traces) ---------------------------------------------------------------------------------

def finished_to_dict(f: Finished) -> dict[str, Any]:
    out: dict[str, Any] = {"at": round(f.at, 4), "outcome": f.outcome, "tokens_out": f.tokens_out}
    for name in ("ttft_s", "queue_wait_s", "e2e_s"):
        value = getattr(f, name)
        if value is not None:
            out[name] = round(value, 5)
    if f.itl_s:
        out["itl_s"] = [round(g, 5) for g in f.itl_s]
    return out


def finished_from_dict(d: dict[str, Any]) -> Finished:
    return Finished(at=float(d["at"]), outcome=str(d["outcome"]), ttft_s=d.get("ttft_s"),
                    queue_wait_s=d.get("queue_wait_s"), e2e_s=d.get("e2e_s"), tokens_out=int(d.get("tokens_out", 0)),
                    itl_s=tuple(float(g) for g in d.get("itl_s", ())))


def tick_to_dict(t: Tick) -> dict[str, Any]:
    out: dict[str, Any] = {"t": round(t.t, 4), "queued": t.queued, "in_flight": t.in_flight, "limit": t.limit,
                           "worker_ready": t.worker_ready, "finished": [finished_to_dict(f) for f in t.finished]}
    if t.mem_headroom_pct is not None:
        out["mem_headroom_pct"] = round(t.mem_headroom_pct, 3)
    if t.gpu_free_pct is not None:
        out["gpu_free_pct"] = round(t.gpu_free_pct, 3)
    if t.missed:
        out["missed"] = t.missed
    return out


def tick_from_dict(d: dict[str, Any]) -> Tick:
    return Tick(t=float(d["t"]), finished=tuple(finished_from_dict(f) for f in d.get("finished", ())),
                queued=int(d.get("queued", 0)), in_flight=int(d.get("in_flight", 0)), limit=int(d.get("limit", 1)),
                worker_ready=bool(d.get("worker_ready", True)), mem_headroom_pct=d.get("mem_headroom_pct"),
                gpu_free_pct=d.get("gpu_free_pct"), missed=int(d.get("missed", 0)))


def shifted(tick: Tick, by: float, **changes: Any) -> Tick:
    """The same tick moved in time by `by` seconds (replaying a recorded segment at a later clock)."""
    fin = tuple(Finished(at=f.at + by, outcome=f.outcome, ttft_s=f.ttft_s, queue_wait_s=f.queue_wait_s,
                         e2e_s=f.e2e_s, tokens_out=f.tokens_out, itl_s=f.itl_s) for f in tick.finished)
    values: dict[str, Any] = {"t": tick.t + by, "finished": fin, "queued": tick.queued, "in_flight": tick.in_flight,
                              "limit": tick.limit, "worker_ready": tick.worker_ready,
                              "mem_headroom_pct": tick.mem_headroom_pct, "gpu_free_pct": tick.gpu_free_pct,
                              "missed": tick.missed}
    values.update(changes)
    return Tick(**values)

