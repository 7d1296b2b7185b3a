"""Goodput at the SLO (agent/bench/goodput.py): which requests count, and the per-second rates."""

from __future__ import annotations

import pytest

from agent.bench.client import RequestResult
from agent.bench.goodput import Goodput, goodput


def req(ok: bool = True, ttft: float | None = 0.1, itl: list[float] | None = None, tokens: int = 10) -> RequestResult:
    return RequestResult(kind="chat", start=0.0, end=1.0, ok=ok, ttft_s=ttft, itl_s=itl or [0.01] * 5,
                         tokens_out=tokens, error=None if ok else "http_5xx")


def test_no_slo_counts_every_successful_request() -> None:
    rs = [req(tokens=10), req(tokens=30), req(ok=False, tokens=0)]
    assert goodput(rs, 2.0, None, None) == Goodput(requests_per_s=1.0, tokens_per_s=20.0, met=2, total=3)


def test_ttft_slo_filters_late_first_tokens_inclusive_bound() -> None:
    rs = [req(ttft=0.5, tokens=4), req(ttft=0.5000001, tokens=100), req(ttft=None, tokens=7)]
    g = goodput(rs, 4.0, 0.5, None)
    assert (g.met, g.total, g.tokens_per_s, g.requests_per_s) == (1, 3, 1.0, 0.25)


def test_itl_slo_uses_each_requests_own_p95() -> None:
    # 19 fast gaps and one slow one: p95 (linear interpolation) of [0.01]*19 + [1.0] is 0.01 + 0.05 * 0.99
    mostly_fast = req(itl=[0.01] * 19 + [1.0], tokens=20)
    slow = req(itl=[0.2] * 10, tokens=11)
    p95 = 0.01 + (1.0 - 0.01) * 0.05
    assert goodput([mostly_fast, slow], 1.0, None, p95 + 1e-9).met == 1
    assert goodput([mostly_fast, slow], 1.0, None, p95 - 1e-6).met == 0
    assert goodput([mostly_fast, slow], 1.0, None, 0.2).tokens_per_s == 31.0
    assert goodput([mostly_fast, slow], 1.0, None, 0.1).tokens_per_s == 20.0


def test_both_slos_must_hold() -> None:
    rs = [req(ttft=0.1, itl=[0.5]), req(ttft=3.0, itl=[0.01]), req(ttft=0.1, itl=[0.01], tokens=9)]
    assert goodput(rs, 1.0, 1.0, 0.1) == Goodput(1.0, 9.0, 1, 3)


def test_wall_time_must_be_positive() -> None:
    with pytest.raises(ValueError, match="wall_s"):
        goodput([req()], 0.0, None, None)
