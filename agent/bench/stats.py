"""The B/A ratio of two arms' per-round figures with a percentile bootstrap confidence interval.

Rounds are the unit (requests inside one round share the host's state and are not independent). A compare runs
them alternating A1, B1, A2, B2, ..., so round i of A and round i of B saw the same host at about the same time:
when the arms have equal round counts the bootstrap resamples round *indices* and takes mean(B) / mean(A) over the
same resampled indices (paired: a drift of the host's load that moves both rounds of a pair together cancels out
of the ratio instead of widening its interval). Unequal counts fall back to resampling each arm independently.
The interval is the (1-level)/2 and (1+level)/2 percentiles of the resampled ratios. Seeded, so a report is
reproducible. Pure.

Fewer than MIN_ROUNDS rounds in an arm give only a handful of distinct resampled means, so no interval is
reported (the ratio is, with a note). When A's mean is 0 in the data, or 0 together with B's in any resample,
the ratio is not a number to trust: ratio and interval are both None, with a note. A resample whose A mean is 0
while B's is not (A met the SLO in none of the drawn rounds, B did) is an unbounded ratio: it sorts above every
finite one, so the lower bound stays a number and the upper bound is None (unbounded) once such resamples reach
the upper tail. The report then says "B/A is at least `low`" at that level, which is what a run where the
baseline served almost nothing within the SLO can honestly claim.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from agent.errors import InputError
from agent.metrics.window import percentile

MIN_ROUNDS = 5
MIN_RESAMPLES = 2000


@dataclass(frozen=True)
class RatioCI:
    ratio: float | None      # mean(B) / mean(A); None when degenerate (see note)
    low: float | None        # None: no interval (see note)
    high: float | None       # None with a low: unbounded (see the module's doc)
    level: float
    resamples: int
    seed: int
    rounds_a: int
    rounds_b: int
    degenerate: int          # resamples whose A mean was 0
    paired: bool = False     # resampled by round index (equal counts) rather than per arm
    note: str | None = None  # why ratio or interval is None

    def as_dict(self) -> dict[str, float | int | bool | str | None]:
        return asdict(self)

    def excludes_one(self) -> bool:
        return (self.low is not None and self.low > 1.0) or (self.high is not None and self.high < 1.0)


def mean(values: Sequence[float]) -> float:
    if not values:
        raise InputError("no values to average")
    return sum(values) / len(values)


def _resampled_ratios(a: Sequence[float], b: Sequence[float], paired: bool, resamples: int,
                      rng: random.Random) -> tuple[list[float], int, int]:
    """Finite ratios, resamples with A's mean 0 (B's not: unbounded), and with both means 0 (undefined)."""
    ratios: list[float] = []
    degenerate = 0
    undefined = 0
    na, nb = len(a), len(b)
    for _ in range(resamples):
        if paired:
            idx = [rng.randrange(na) for _ in range(na)]
            ma = sum(a[i] for i in idx) / na
            mb = sum(b[i] for i in idx) / na
        else:
            ma = sum(a[rng.randrange(na)] for _ in range(na)) / na
            mb = sum(b[rng.randrange(nb)] for _ in range(nb)) / nb
        if ma == 0:
            degenerate += 1
            undefined += mb == 0
            continue
        ratios.append(mb / ma)
    return ratios, degenerate, undefined


def _bound(finite: Sequence[float], unbounded: int, q: float) -> float | None:
    """The q quantile (linear interpolation, as `percentile`) of the sorted finite ratios followed by `unbounded`
    infinite ones; None where it falls on or next to an infinite one."""
    n = len(finite) + unbounded
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    if hi >= len(finite):
        return None if pos > len(finite) - 1 else finite[-1]
    return finite[lo] + (finite[hi] - finite[lo]) * (pos - lo)


def bootstrap_ratio(a: Sequence[float], b: Sequence[float], *, resamples: int = 5000, seed: int = 1,
                    level: float = 0.95, paired: bool | None = None) -> RatioCI:
    """mean(b) / mean(a) and its `level` percentile bootstrap interval. paired=None: paired when the arms have
    equal round counts (True with unequal counts is an error)."""
    for name, arm in (("A", a), ("B", b)):
        if not arm:
            raise InputError(f"arm {name} has 0 rounds: nothing to compare", field="--rounds")
        if any(v != v or v < 0 for v in arm):  # NaN or negative: not a rate
            raise InputError(f"arm {name} holds a negative or NaN figure: {list(arm)}")
    if resamples < MIN_RESAMPLES:
        raise InputError(f"at least {MIN_RESAMPLES} resamples, got {resamples}")
    if not 0.5 <= level < 1.0:
        raise InputError(f"confidence level must be within [0.5, 1), got {level}")
    na, nb = len(a), len(b)
    if paired is None:
        paired = na == nb
    elif paired and na != nb:
        raise InputError(f"paired resampling needs equal round counts, got {na} and {nb}")
    mean_a = mean(a)
    base = RatioCI(ratio=mean(b) / mean_a if mean_a else None, low=None, high=None, level=level,
                   resamples=resamples, seed=seed, rounds_a=na, rounds_b=nb, degenerate=0, paired=paired)
    if not mean_a:
        return replace(base, ratio=None, note="arm A's mean is 0: no ratio")
    if min(na, nb) < MIN_ROUNDS:
        return replace(base, note=f"fewer than {MIN_ROUNDS} rounds per arm: too few for an interval")
    ratios, degenerate, undefined = _resampled_ratios(a, b, paired, resamples, random.Random(seed))
    ratios.sort()
    tail = (1.0 - level) / 2
    if not degenerate:
        return replace(base, low=percentile(ratios, tail), high=percentile(ratios, 1.0 - tail))
    low = _bound(ratios, degenerate, tail)
    if undefined or low is None:
        why = f"and B's too in {undefined}" if undefined else "in too many for a lower bound"
        return replace(base, ratio=None, degenerate=degenerate,
                       note=f"arm A's mean was 0 in {degenerate} of {resamples} resamples ({why}): no ratio")
    high = _bound(ratios, degenerate, 1.0 - tail)
    return replace(base, low=low, high=high, degenerate=degenerate,
                   note=f"arm A's mean was 0 (B's not) in {degenerate} of {resamples} resamples, counted as an "
                        f"unbounded ratio" + ("" if high is not None else ": no upper bound, B/A is at least the low"))

