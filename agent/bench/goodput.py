"""Goodput at SLO: the requests per second (and their output tokens per second) that users were served well.

A request counts when it succeeded, its time to first token met the TTFT SLO, and its own inter-token latency
p95 met the ITL SLO (per request, not pooled: one user's stuttering reply fails that user however smooth the
others were). A None SLO does not filter; a request with no gaps (one token) meets any ITL SLO; a request
without a first token fails a TTFT SLO. One pure function, shared by `hosttune bench` and `bench --compare`.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.bench.client import RequestResult
from agent.metrics.window import percentile


@dataclass(frozen=True)
class Goodput:
    requests_per_s: float     # SLO-meeting requests per second of wall time
    tokens_per_s: float       # their output tokens per second of wall time
    met: int                  # requests that met every given SLO
    total: int                # requests issued (failed ones included)


def meets_slo(r: RequestResult, ttft_slo_s: float | None, itl_slo_s: float | None) -> bool:
    if not r.ok:
        return False
    if ttft_slo_s is not None and (r.ttft_s is None or r.ttft_s > ttft_slo_s):
        return False
    if itl_slo_s is not None and r.itl_s:
        p95 = percentile(sorted(r.itl_s), 0.95)
        if p95 is not None and p95 > itl_slo_s:
            return False
    return True


def goodput(results: list[RequestResult], wall_s: float, ttft_slo_s: float | None,
            itl_slo_s: float | None) -> Goodput:
    if wall_s <= 0:
        raise ValueError(f"wall time must be > 0, got {wall_s}")
    met = [r for r in results if meets_slo(r, ttft_slo_s, itl_slo_s)]
    return Goodput(requests_per_s=len(met) / wall_s, tokens_per_s=sum(r.tokens_out for r in met) / wall_s,
                   met=len(met), total=len(results))
