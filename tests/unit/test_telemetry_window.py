"""Percentiles and sliding windows, checked against the standard library's inclusive quantiles (the same linear
interpolation, computed independently) and against hand-worked values."""

from __future__ import annotations

import itertools
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.metrics.window import LatencyWindow, RateWindow, percentile, summarize


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_percentile_hand_worked() -> None:
    vals = [1.0, 2.0, 3.0, 4.0]
    assert percentile(vals, 0.0) == 1.0
    assert percentile(vals, 1.0) == 4.0
    assert percentile(vals, 0.5) == 2.5          # halfway between 2 and 3
    assert percentile(vals, 0.95) == pytest.approx(3.85)  # 3 + 0.85 * (4 - 3)
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None
    with pytest.raises(ValueError):
        percentile(vals, 1.5)


@given(st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=2, max_size=300))
def test_percentiles_match_statistics_inclusive(values: list[float]) -> None:
    cuts = statistics.quantiles(values, n=100, method="inclusive")  # cuts[k-1] is the k-th percentile
    ordered = sorted(values)
    for k in (50, 95, 99):
        assert percentile(ordered, k / 100) == pytest.approx(cuts[k - 1], rel=1e-9, abs=1e-9)


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=100))
def test_quantiles_are_ordered_and_bounded(values: list[float]) -> None:
    q = summarize(values, (0.0, 0.5, 0.95, 0.99, 1.0))
    got = [q[k] for k in (0.0, 0.5, 0.95, 0.99, 1.0)]
    assert got[0] == min(values) and got[-1] == max(values)
    assert all(a is not None and b is not None and a <= b + 1e-9 for a, b in itertools.pairwise(got))


def test_window_forgets_by_time() -> None:
    clock = Clock()
    w = LatencyWindow(window_s=10, clock=clock)
    w.observe(5.0)          # t=1000
    clock.now += 6
    w.observe(1.0)          # t=1006
    w.observe(2.0)
    assert sorted(w.values()) == [1.0, 2.0, 5.0]
    clock.now += 5          # t=1011: the first is older than 10 s
    assert sorted(w.values()) == [1.0, 2.0]
    s = w.summary()
    assert s.count == 2 and s.q(0.5) == 1.5 and s.mean == 1.5
    clock.now += 100
    assert w.summary().count == 0 and w.summary().q(0.95) is None


def test_window_caps_memory_dropping_oldest() -> None:
    w = LatencyWindow(window_s=3600, max_samples=100)
    w.observe_many(float(i) for i in range(1000))
    vals = w.values()
    assert len(vals) == 100 and min(vals) == 900.0


def test_rate_window() -> None:
    clock = Clock()
    r = RateWindow(window_s=10, clock=clock)
    clock.now += 20        # a long-lived window divides by its full span
    r.add(50)
    r.add(50)
    assert r.rate() == pytest.approx(10.0)
    clock.now += 11
    assert r.rate() == 0.0
    young = RateWindow(window_s=10, clock=clock)
    clock.now += 2         # younger than the window: divide by its age, not by 10 s
    young.add(10)
    assert young.rate() == pytest.approx(5.0)


def test_invalid_windows_are_refused() -> None:
    with pytest.raises(ValueError):
        LatencyWindow(window_s=0)
    with pytest.raises(ValueError):
        LatencyWindow(max_samples=0)
