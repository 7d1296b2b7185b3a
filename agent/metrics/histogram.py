"""Cumulative fixed-bucket histograms with Prometheus histogram semantics (`le` = less than or equal).

Quantiles computed on one host cannot be combined across a fleet; bucket counts can (sum them, then
histogram_quantile). The gateway observes on its per-request path, so an observation is one bisect into a fixed
tuple of bounds and one integer increment. Not thread-safe on purpose: the owner observes and snapshots under the
lock it already holds (GatewayStats._lock), so one request costs one lock, not one per histogram.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise


@dataclass(frozen=True)
class HistogramSnapshot:
    """A histogram at one instant: upper bounds (ascending, +Inf implied), cumulative counts per bound with the
    +Inf count last, and the sum of all observations."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return self.cumulative[-1]

    def buckets(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, +Inf last."""
        return list(zip((*self.bounds, math.inf), self.cumulative, strict=True))


class Histogram:
    """Counts observations into buckets fixed at construction; cumulative since it was made."""

    __slots__ = ("_counts", "bounds", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if not bounds:
            raise ValueError("a histogram needs at least one bucket bound")
        clean = tuple(float(b) for b in bounds)
        if not all(math.isfinite(b) for b in clean):
            raise ValueError("bucket bounds must be finite (+Inf is implied)")
        if any(a >= b for a, b in pairwise(clean)):
            raise ValueError("bucket bounds must be strictly increasing")
        self.bounds = clean
        self._counts = [0] * (len(clean) + 1)   # per bucket (not cumulative); the last is above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        if value != value:  # NaN: no bucket holds it, and it would poison the sum
            return
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le is "less than or equal")
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: Iterable[float]) -> None:
        """observe() for each value (a request's inter-token gaps), with the lookups hoisted out of the loop."""
        counts, bounds, find = self._counts, self.bounds, bisect.bisect_left
        total = 0.0
        for v in values:
            if v == v:  # not NaN
                counts[find(bounds, v)] += 1
                total += v
        self.sum += total

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(accumulate(self._counts)), self.sum)
