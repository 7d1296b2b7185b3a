"""The B/A ratio and its percentile bootstrap interval (agent/bench/stats.py), on recorded round figures."""

from __future__ import annotations

import random

import pytest

from agent.bench.stats import bootstrap_ratio, mean
from agent.errors import InputError

# tokens/s of five rounds per arm, as a compare records them
A_ROUNDS = [78.6, 76.2, 80.1, 77.4, 79.0]


def test_identical_arms_give_one_inside_the_interval() -> None:
    ci = bootstrap_ratio(A_ROUNDS, list(A_ROUNDS), resamples=2000, seed=3)
    assert ci.ratio == pytest.approx(1.0)
    assert ci.low is not None and ci.high is not None
    assert ci.low < 1.0 < ci.high
    assert not ci.excludes_one()
    # the spread of the rounds is ~2%: the interval of the ratio of means is a few percent wide, not more
    assert ci.high - ci.low < 0.1


def test_a_clear_doubling_gives_an_interval_around_two_excluding_one() -> None:
    b = [2 * v + d for v, d in zip(A_ROUNDS, (0.5, -0.4, 0.3, -0.2, 0.1), strict=True)]
    ci = bootstrap_ratio(A_ROUNDS, b, resamples=4000, seed=1)
    assert ci.ratio == pytest.approx(sum(b) / sum(A_ROUNDS))
    assert ci.low is not None and ci.high is not None
    assert 1.9 < ci.low < ci.ratio < ci.high < 2.1
    assert ci.excludes_one()


def test_interval_matches_an_independent_bootstrap() -> None:
    """The same resampling written out plainly here (numpy-style linear percentiles) gives the same bounds."""
    a, b = [10.0, 12.0, 11.0, 9.0], [13.0, 12.5, 15.0, 14.0, 11.0]
    ci = bootstrap_ratio(a, b, resamples=3000, seed=42, level=0.9)
    rng = random.Random(42)
    ratios = []
    for _ in range(3000):
        ma = sum(a[rng.randrange(len(a))] for _ in a) / len(a)
        mb = sum(b[rng.randrange(len(b))] for _ in b) / len(b)
        ratios.append(mb / ma)
    ratios.sort()

    def q(p: float) -> float:
        pos = p * (len(ratios) - 1)
        lo = int(pos)
        return ratios[lo] + (ratios[min(lo + 1, len(ratios) - 1)] - ratios[lo]) * (pos - lo)

    assert ci.low == pytest.approx(q(0.05))
    assert ci.high == pytest.approx(q(0.95))
    assert (ci.rounds_a, ci.rounds_b, ci.level) == (4, 5, 0.9)


def test_seeded_and_reproducible() -> None:
    b = [v * 1.1 for v in A_ROUNDS]
    assert bootstrap_ratio(A_ROUNDS, b, seed=7) == bootstrap_ratio(A_ROUNDS, b, seed=7)
    assert bootstrap_ratio(A_ROUNDS, b, seed=7).low != bootstrap_ratio(A_ROUNDS, b, seed=8).low


def test_too_few_rounds_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="arm A has 1 round"):
        bootstrap_ratio([1.0], [1.0, 2.0])
    with pytest.raises(InputError, match="arm B has 0 round"):
        bootstrap_ratio([1.0, 2.0], [])


def test_bad_figures_and_settings_are_refused() -> None:
    with pytest.raises(InputError, match="negative or NaN"):
        bootstrap_ratio([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(InputError, match="resamples"):
        bootstrap_ratio([1.0, 2.0], [1.0, 2.0], resamples=100)
    with pytest.raises(InputError, match="level"):
        bootstrap_ratio([1.0, 2.0], [1.0, 2.0], level=0.2)
    with pytest.raises(InputError):
        mean([])


def test_zero_goodput_on_a_and_zero_resamples_are_reported_not_divided() -> None:
    ci = bootstrap_ratio([0.0, 0.0, 0.0], [1.0, 2.0, 1.5])
    assert ci.ratio is None and ci.low is None and ci.high is None
    assert ci.degenerate == ci.resamples
    some = bootstrap_ratio([0.0, 0.0, 3.0], [1.0, 1.0, 1.0], resamples=2000, seed=2)
    assert 0 < some.degenerate < 2000 and some.ratio == pytest.approx(1.0)
