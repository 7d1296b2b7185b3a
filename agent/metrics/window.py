"""Latency windows: percentiles over the last N seconds of observations.

The controller's SLO is "p95 TTFT over the recent past", not since start-up, so a window forgets by time. It also
caps the number of samples it keeps, so a flood of inter-token latencies cannot grow memory without bound (the
oldest are dropped first, which is what the time window would do anyway). Thread-safe: the gateway records from its
event loop while the telemetry job reads from the scheduler's thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

QUANTILES: tuple[float, ...] = (0.5, 0.95, 0.99)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated quantile (numpy's default method) of values already sorted; None when empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    n = len(sorted_values)
    if n == 0:
        return None
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def summarize(values: Iterable[float], quantiles: Sequence[float] = QUANTILES) -> dict[float, float | None]:
    ordered = sorted(values)
    return {q: percentile(ordered, q) for q in quantiles}


@dataclass(frozen=True)
class WindowSummary:
    """What a window held at one instant: count and quantiles of the samples inside it."""

    count: int
    mean: float | None
    quantiles: dict[float, float | None]

    def q(self, q: float) -> float | None:
        return self.quantiles.get(q)


class LatencyWindow:
    """Observations (seconds) from the last `window_s` seconds, at most `max_samples` of them."""

    def __init__(self, window_s: float = 60.0, max_samples: int = 50_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        if max_samples < 1:
            raise ValueError("max_samples must be at least 1")
        self.window_s = window_s
        self._clock = clock
        self._items: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._lock = threading.Lock()

    def observe(self, value: float, at: float | None = None) -> None:
        now = self._clock() if at is None else at
        with self._lock:
            self._items.append((now, value))

    def observe_many(self, values: Iterable[float], at: float | None = None) -> None:
        now = self._clock() if at is None else at
        with self._lock:
            self._items.extend((now, v) for v in values)

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        items = self._items
        while items and items[0][0] < horizon:
            items.popleft()

    def values(self) -> list[float]:
        with self._lock:
            self._expire(self._clock())
            return [v for _, v in self._items]

    def __len__(self) -> int:
        return len(self.values())

    def summary(self, quantiles: Sequence[float] = QUANTILES) -> WindowSummary:
        vals = self.values()
        vals.sort()
        mean = sum(vals) / len(vals) if vals else None
        return WindowSummary(count=len(vals), mean=mean,
                             quantiles={q: percentile(vals, q) for q in quantiles})


class RateWindow:
    """A sum of events (tokens, requests) over the last `window_s` seconds, read as a per-second rate."""

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._items: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()
        self._started = clock()

    def add(self, amount: float, at: float | None = None) -> None:
        now = self._clock() if at is None else at
        with self._lock:
            self._items.append((now, amount))

    def rate(self) -> float:
        """Sum within the window divided by the window (or by the time since start, if shorter)."""
        now = self._clock()
        with self._lock:
            horizon = now - self.window_s
            while self._items and self._items[0][0] < horizon:
                self._items.popleft()
            total = sum(a for _, a in self._items)
        span = min(self.window_s, max(now - self._started, 1e-9))
        return total / span
