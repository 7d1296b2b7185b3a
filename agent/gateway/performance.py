"""What the gateway served over the last N seconds, from its per-request records: the figures a rollout gate
compares before and after a policy change (GET /v1/performance).

The window counts the requests that *started and finished* inside it, so a request the previous worker began never
counts for the next one. It opens at the latest of: N seconds ago, the moment the worker in service now became
ready, the moment the policy in force now took over (`since`). The records are GatewayStats.recent, a bounded
deque ordered by finish, copied by the caller under the stats lock (GatewayStats.recent_records(): the gateway
thread appends to it meanwhile): when its oldest record finished inside the window, older requests were pushed
out, and the figures cover only the requests that started after that record finished, which the deque surely
still holds (`truncated`; `covered_s` is that span and tokens/s is taken over it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.gateway.stats import RequestRecord
from agent.metrics.window import percentile

FAILED = ("error", "timeout")  # the worker's fault; rejected (admission) and client_abort are counted apart


@dataclass(frozen=True)
class WindowFigures:
    window_s: float              # seconds the window spans (<= requested: it opens no earlier than `since`)
    covered_s: float             # seconds the figures cover (< window_s when truncated)
    truncated: bool
    requests: int                # finished ok inside the window
    failed: int                  # finished error/timeout inside the window
    rejected: int                # refused by admission (503) inside the window
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    itl_p95_s: float | None
    e2e_p95_s: float | None
    output_tokens: int
    output_tokens_per_second: float | None


def window_figures(records: Iterable[RequestRecord], now: float, seconds: float, since: float | None = None,
                   capacity: int | None = None) -> WindowFigures:
    """Figures over the finished records that started at or after max(now - seconds, since).

    `now`, `since` and the records' `started` are on one clock (monotonic). `capacity`: the deque's maxlen; a full
    deque whose oldest record is inside the window means the window is truncated to what it still holds."""
    if seconds <= 0:
        raise ValueError("seconds must be > 0")
    start = now - seconds if since is None else max(now - seconds, since)
    window_s = max(0.0, now - start)
    kept = list(records)
    truncated = capacity is not None and len(kept) >= capacity > 0 and _finished_at(kept[0]) > start
    if truncated:
        start = _finished_at(kept[0])
    covered_s = max(0.0, now - start)
    inside = [r for r in kept if r.outcome is not None and r.started >= start]
    ok = [r for r in inside if r.outcome == "ok"]
    ttft = sorted(r.ttft_s for r in ok if r.ttft_s is not None)
    e2e = sorted(r.e2e_s for r in ok if r.e2e_s is not None)
    itl = sorted(v for r in ok for v in r.itl_s)
    tokens = sum(r.tokens_out or 0 for r in inside)
    return WindowFigures(
        window_s=round(window_s, 3), covered_s=round(covered_s, 3), truncated=truncated, requests=len(ok),
        failed=sum(r.outcome in FAILED for r in inside), rejected=sum(r.outcome == "rejected" for r in inside),
        ttft_p50_s=_q(ttft, 0.5), ttft_p95_s=_q(ttft, 0.95), itl_p95_s=_q(itl, 0.95), e2e_p95_s=_q(e2e, 0.95),
        output_tokens=tokens, output_tokens_per_second=round(tokens / covered_s, 3) if covered_s > 0 else None)


def _finished_at(rec: RequestRecord) -> float:
    # A record reaches the deque when it finished; e2e_s is unset for some rejects: they finished at once.
    return rec.started + (rec.e2e_s or 0.0)


def _q(values: Sequence[float], q: float) -> float | None:
    v = percentile(values, q)
    return None if v is None else round(v, 6)
