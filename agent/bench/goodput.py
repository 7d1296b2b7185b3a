"""Goodput at an SLO: the requests (and their output tokens) per second that met the time-to-first-token and the
inter-token-latency objectives — what a service level actually delivers, where tokens/s also counts late answers.

A request counts when it succeeded, its TTFT is at most `ttft_slo_s`, and the 95th percentile of its own gaps
between tokens is at most `itl_slo_s`. A None SLO does not filter on that figure. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.bench.client import RequestResult
from agent.metrics.window import percentile


@dataclass(frozen=True)
class Goodput:
    requests_per_s: float   # SLO-meeting requests per second of wall time
    tokens_per_s: float     # their output tokens per second of wall time
    met: int                # requests that met the SLO
    total: int              # requests sent (ok or not)


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


def goodput(results: Sequence[RequestResult], wall_s: float, ttft_slo_s: float | None,
            itl_slo_s: float | None) -> Goodput:
    if wall_s <= 0:
        raise ValueError(f"wall_s must be > 0, got {wall_s}")
    met = [r for r in results if meets_slo(r, ttft_slo_s, itl_slo_s)]
    return Goodput(requests_per_s=len(met) / wall_s, tokens_per_s=sum(r.tokens_out for r in met) / wall_s,
                   met=len(met), total=len(results))
