"""Cumulative histograms: `le` semantics at the bounds, cumulative counts against a brute-force count, and the
gateway's four histograms after a recorded request sequence (right records in the right histogram, _count equal to
the +Inf bucket, the JSON views without them)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.gateway.app import snapshot_dict
from agent.gateway.stats import (
    DURATION_BUCKETS,
    ITL_BUCKETS,
    QUEUE_WAIT_BUCKETS,
    TTFT_BUCKETS,
    GatewayStats,
    RequestRecord,
)
from agent.metrics.histogram import Histogram
from agent.metrics.prom import format_families, parse_text, sample_value


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    h = Histogram((0.1, 0.5, 1))
    for v in (0.1, 0.5, 0.50001, 1, 7, 0.0):
        h.observe(v)
    snap = h.snapshot()
    assert snap.buckets() == [(0.1, 2), (0.5, 3), (1.0, 5), (math.inf, 6)]
    assert snap.count == 6 and snap.sum == pytest.approx(9.10001)


def test_nan_is_ignored_and_bad_bounds_are_refused() -> None:
    h = Histogram((1, 2))
    h.observe(math.nan)
    assert h.snapshot().count == 0 and h.snapshot().sum == 0
    for bad in ((), (1, 1), (2, 1), (1, math.inf), (math.nan,)):
        with pytest.raises(ValueError):
            Histogram(bad)


@given(st.lists(st.floats(min_value=0, max_value=400, allow_nan=False), max_size=200))
def test_cumulative_counts_match_a_brute_force_count(values: list[float]) -> None:
    h = Histogram(DURATION_BUCKETS)
    half = len(values) // 2
    for v in values[:half]:
        h.observe(v)
    h.observe_many([*values[half:], math.nan])   # the batch form (a request's gaps) counts the same way
    snap = h.snapshot()
    counts = [c for _, c in snap.buckets()]
    assert counts == sorted(counts)                       # monotone
    assert snap.count == len(values) == counts[-1]        # _count is the +Inf bucket
    for bound, count in snap.buckets():
        assert count == sum(1 for v in values if v <= bound)
    assert snap.sum == pytest.approx(sum(values))


def record(outcome: str, ttft: float | None = None, itl: tuple[float, ...] = (), e2e: float | None = None,
           wait: float | None = 0.002) -> RequestRecord:
    return RequestRecord(route="/v1/chat/completions", stream=True, started=0.0, queue_wait_s=wait, ttft_s=ttft,
                         itl_s=list(itl), e2e_s=e2e, tokens_in=4, tokens_out=len(itl) + 1 if ttft else 0,
                         outcome=outcome)


def test_gateway_histograms_after_a_request_sequence() -> None:
    stats = GatewayStats()
    stats.finish(record("ok", ttft=0.3, itl=(0.01, 0.05, 0.2), e2e=0.6))
    stats.finish(record("ok", ttft=1.2, itl=(0.04,), e2e=2.5, wait=0.3))
    stats.finish(record("rejected", wait=12.0))                   # waited, never served: queue wait only
    stats.finish(record("error", ttft=0.1, itl=(0.01,), e2e=0.2))  # failed: its latencies are not exported
    fams = parse_text(format_families(stats.families(stats.sample())))

    def bucket(name: str, le: str) -> float | None:
        return sample_value(fams, f"hosttune_gateway_{name}_bucket", {"le": le})

    assert fams["hosttune_gateway_ttft_seconds"].type == "histogram"
    assert bucket("ttft_seconds", "0.2") == 0 and bucket("ttft_seconds", "0.3") == 1
    assert bucket("ttft_seconds", "1.0") == 1 and bucket("ttft_seconds", "1.5") == 2
    assert sample_value(fams, "hosttune_gateway_ttft_seconds_sum") == pytest.approx(1.5)
    assert bucket("itl_seconds", "0.01") == 1 and bucket("itl_seconds", "0.05") == 3   # one per gap
    assert sample_value(fams, "hosttune_gateway_itl_seconds_count") == 4
    assert bucket("request_duration_seconds", "0.5") == 0 and bucket("request_duration_seconds", "3.0") == 2
    assert bucket("queue_wait_seconds", "0.005") == 2 and bucket("queue_wait_seconds", "10.0") == 3
    assert sample_value(fams, "hosttune_gateway_queue_wait_seconds_count") == 4
    for name, bounds in (("ttft_seconds", TTFT_BUCKETS), ("itl_seconds", ITL_BUCKETS),
                         ("request_duration_seconds", DURATION_BUCKETS),
                         ("queue_wait_seconds", QUEUE_WAIT_BUCKETS)):
        les = [s.labels["le"] for s in fams[f"hosttune_gateway_{name}"].samples if s.name.endswith("_bucket")]
        assert [float(le) for le in les] == [*map(float, bounds), math.inf]
        counts = [bucket(name, le) or 0 for le in les]
        assert counts == sorted(counts)
        assert counts[-1] == sample_value(fams, f"hosttune_gateway_{name}_count")
    # the windows (controller, JSON) still see the same served requests, and the JSON carries no buckets
    snap = snapshot_dict(stats)
    assert "histograms" not in snap and snap["ttft"]["count"] == 2 and snap["itl"]["count"] == 4

