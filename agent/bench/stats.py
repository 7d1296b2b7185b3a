"""The B/A ratio of two arms' per-round figures with a percentile bootstrap confidence interval.

Each arm's rounds are resampled with replacement, independently (rounds are the unit: requests inside one round
share the host's state and are not independent); the statistic is mean(B) / mean(A). The interval is the
(1-level)/2 and (1+level)/2 percentiles of the resampled ratios. Seeded, so a report is reproducible. Pure.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from agent.errors import InputError
from agent.metrics.window import percentile

MIN_ROUNDS = 2
MIN_RESAMPLES = 2000


@dataclass(frozen=True)
class RatioCI:
    ratio: float | None      # mean(B) / mean(A); None when mean(A) is 0
    low: float | None
    high: float | None
    level: float
    resamples: int
    seed: int
    rounds_a: int
    rounds_b: int
    degenerate: int          # resamples whose A mean was 0 (left out of the interval)

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    def excludes_one(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 1.0 or self.high < 1.0)


def mean(values: Sequence[float]) -> float:
    if not values:
        raise InputError("no values to average")
    return sum(values) / len(values)


def bootstrap_ratio(a: Sequence[float], b: Sequence[float], *, resamples: int = 5000, seed: int = 1,
                    level: float = 0.95) -> RatioCI:
    """mean(b) / mean(a) and its `level` percentile bootstrap interval, resampling rounds within each arm."""
    for name, arm in (("A", a), ("B", b)):
        if len(arm) < MIN_ROUNDS:
            raise InputError(f"arm {name} has {len(arm)} round(s): a confidence interval needs at least "
                             f"{MIN_ROUNDS} per arm (use --rounds 5 or more)", field="--rounds")
        if any(v != v or v < 0 for v in arm):  # NaN or negative: not a rate
            raise InputError(f"arm {name} holds a negative or NaN figure: {list(arm)}")
    if resamples < MIN_RESAMPLES:
        raise InputError(f"at least {MIN_RESAMPLES} resamples, got {resamples}")
    if not 0.5 <= level < 1.0:
        raise InputError(f"confidence level must be within [0.5, 1), got {level}")
    rng = random.Random(seed)
    ratios: list[float] = []
    degenerate = 0
    na, nb = len(a), len(b)
    for _ in range(resamples):
        ma = sum(a[rng.randrange(na)] for _ in range(na)) / na
        mb = sum(b[rng.randrange(nb)] for _ in range(nb)) / nb
        if ma == 0:
            degenerate += 1
            continue
        ratios.append(mb / ma)
    ratios.sort()
    tail = (1.0 - level) / 2
    mean_a = mean(a)
    return RatioCI(ratio=mean(b) / mean_a if mean_a else None, low=percentile(ratios, tail),
                   high=percentile(ratios, 1.0 - tail), level=level, resamples=resamples, seed=seed,
                   rounds_a=na, rounds_b=nb, degenerate=degenerate)
