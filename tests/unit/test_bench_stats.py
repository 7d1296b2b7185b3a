"""The B/A ratio and its percentile bootstrap interval (agent/bench/stats.py), on recorded round figures."""

from __future__ import annotations

import random

import pytest

from agent.bench.stats import bootstrap_ratio, mean
from agent.errors import InputError

# tokens/s of five rounds per arm, as a compare records them
A_ROUNDS = [78.6, 76.2, 80.1, 77.4, 79.0]
# the same setup run again as B: identical arms up to round-to-round noise
SAME_ROUNDS = [77.9, 79.3, 76.8, 80.0, 78.1]


def test_identical_arms_give_one_inside_the_interval() -> None:
    ci = bootstrap_ratio(A_ROUNDS, SAME_ROUNDS, resamples=2000, seed=3)
    assert ci.paired and ci.note is None
    assert ci.ratio == pytest.approx(sum(SAME_ROUNDS) / sum(A_ROUNDS))
    assert ci.low is not None and ci.high is not None
    assert ci.low < 1.0 < ci.high
    assert not ci.excludes_one()
    # the spread of the rounds is ~2%: the interval of the ratio of means is a few percent wide, not more
    assert ci.high - ci.low < 0.1
    same = bootstrap_ratio(A_ROUNDS, list(A_ROUNDS), resamples=2000, seed=3)  # literally the same figures
    assert same.low == same.ratio == same.high == pytest.approx(1.0) and not same.excludes_one()


def test_paired_resampling_cancels_a_drift_that_moves_both_rounds_of_a_pair() -> None:
    """The host's background load rises over the run (A1, B1, A2, B2, ...): each pair sees the same load, B is
    ~5% faster within each pair. Resampled by index the drift cancels; resampled per arm it widens the interval."""
    a = [100.0, 90.5, 80.2, 69.8, 60.1, 50.3]
    b = [105.4, 94.8, 84.3, 73.5, 62.9, 52.9]
    paired = bootstrap_ratio(a, b, resamples=4000, seed=5)
    unpaired = bootstrap_ratio(a, b, resamples=4000, seed=5, paired=False)
    assert paired.paired and not unpaired.paired and paired.ratio == unpaired.ratio
    assert paired.low is not None and paired.high is not None
    assert unpaired.low is not None and unpaired.high is not None
    assert paired.high - paired.low < (unpaired.high - unpaired.low) / 3
    assert paired.excludes_one() and not unpaired.excludes_one()


def test_a_clear_doubling_gives_an_interval_around_two_excluding_one() -> None:
    b = [2 * v + d for v, d in zip(A_ROUNDS, (0.5, -0.4, 0.3, -0.2, 0.1), strict=True)]
    ci = bootstrap_ratio(A_ROUNDS, b, resamples=4000, seed=1)
    assert ci.ratio == pytest.approx(sum(b) / sum(A_ROUNDS))
    assert ci.low is not None and ci.high is not None
    assert 1.9 < ci.low < ci.ratio < ci.high < 2.1
    assert ci.excludes_one()


def test_interval_matches_an_independent_bootstrap() -> None:
    """Unequal round counts (unpaired): the same resampling written out plainly here (numpy-style linear
    percentiles) gives the same bounds."""
    a, b = [10.0, 12.0, 11.0, 9.0, 10.5], [13.0, 12.5, 15.0, 14.0, 11.0, 12.0]
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
    assert (ci.rounds_a, ci.rounds_b, ci.level, ci.paired) == (5, 6, 0.9, False)


def test_seeded_and_reproducible() -> None:
    b = [v * 1.1 for v in A_ROUNDS]
    assert bootstrap_ratio(A_ROUNDS, b, seed=7) == bootstrap_ratio(A_ROUNDS, b, seed=7)
    assert bootstrap_ratio(A_ROUNDS, b, seed=7).low != bootstrap_ratio(A_ROUNDS, b, seed=8).low


def test_paired_interval_matches_an_independent_paired_bootstrap() -> None:
    a, b = [10.0, 12.0, 11.0, 9.0, 10.5], [13.0, 12.5, 15.0, 14.0, 11.0]
    ci = bootstrap_ratio(a, b, resamples=3000, seed=42, level=0.9)
    rng = random.Random(42)
    ratios = []
    for _ in range(3000):
        idx = [rng.randrange(5) for _ in range(5)]
        ratios.append(sum(b[i] for i in idx) / sum(a[i] for i in idx))
    ratios.sort()
    assert ci.paired
    assert ci.low == pytest.approx(ratios[int(0.05 * 2999)], rel=1e-2)
    assert ci.high == pytest.approx(ratios[int(0.95 * 2999)], rel=1e-2)


def test_fewer_than_five_rounds_give_the_ratio_without_an_interval() -> None:
    ci = bootstrap_ratio([10.0, 11.0, 12.0], [20.0, 22.0, 24.0])
    assert ci.ratio == pytest.approx(2.0)
    assert ci.low is None and ci.high is None and not ci.excludes_one()
    assert ci.note is not None and "fewer than 5 rounds" in ci.note
    with pytest.raises(InputError, match="arm B has 0 round"):
        bootstrap_ratio([1.0, 2.0], [])


def test_compare_refuses_fewer_than_five_rounds() -> None:
    from agent.bench.compare import CompareSpec

    with pytest.raises(InputError, match="at least 5 rounds"):
        CompareSpec(scenario="mix", rounds=4, duration_s=1.0, ttft_slo_s=None, itl_slo_s=None,
                    converge_timeout_s=0).check()
    CompareSpec(scenario="mix", rounds=5, duration_s=1.0, ttft_slo_s=None, itl_slo_s=None,
                converge_timeout_s=0).check()


def test_bad_figures_and_settings_are_refused() -> None:
    with pytest.raises(InputError, match="negative or NaN"):
        bootstrap_ratio([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(InputError, match="paired"):
        bootstrap_ratio([1.0] * 5, [1.0] * 6, paired=True)
    with pytest.raises(InputError, match="resamples"):
        bootstrap_ratio([1.0, 2.0], [1.0, 2.0], resamples=100)
    with pytest.raises(InputError, match="level"):
        bootstrap_ratio([1.0, 2.0], [1.0, 2.0], level=0.2)
    with pytest.raises(InputError):
        mean([])


def test_zero_goodput_on_a_gives_neither_ratio_nor_interval() -> None:
    ci = bootstrap_ratio([0.0] * 5, [1.0, 2.0, 1.5, 1.0, 1.0])
    assert ci.ratio is None and ci.low is None and ci.high is None and ci.note
    # A's mean is 3/5 but some resamples draw only its zero rounds while B served: those ratios are unbounded, so
    # a third of them (4/5)^5 reach the upper tail: a lower bound, no upper one
    some = bootstrap_ratio([0.0, 0.0, 0.0, 0.0, 3.0], [1.0] * 5, resamples=2000, seed=2)
    assert 0.25 * 2000 < some.degenerate < 0.45 * 2000
    assert some.ratio == pytest.approx(1 / 0.6) and some.high is None
    # the resampled ratios are 5 / (3 k) for k draws of the 3.0 round: the 2.5% low is one of them
    assert some.low is not None and any(some.low == pytest.approx(5 / (3 * k)) for k in range(2, 6))
    assert some.excludes_one() is (some.low > 1.0)
    assert some.note is not None and "no upper bound" in some.note
    # both arms 0 in a resample: 0/0 says nothing, so no ratio at all
    both = bootstrap_ratio([0.0, 0.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 1.0, 1.0], resamples=2000, seed=2)
    assert both.ratio is None and both.low is None and both.high is None
    assert both.note is not None and "B's too" in both.note


def test_a_baseline_that_almost_never_met_the_slo_gives_a_lower_bound() -> None:
    # a burst where A met the SLO in 3 of 6 rounds, barely, and B in every one: B/A is large and its lower bound a
    # number; the few resamples of A's zero rounds only sit in the upper tail
    a = [0.0, 0.05, 0.0, 0.03, 0.0, 0.02]
    b = [0.35, 0.25, 0.45, 0.35, 0.35, 0.35]
    ci = bootstrap_ratio(a, b, resamples=5000, seed=1)
    assert 0 < ci.degenerate < 0.05 * 5000
    assert ci.ratio == pytest.approx(sum(b) / sum(a)) and ci.low is not None and ci.low > 1.0 and ci.excludes_one()
    assert ci.high is None or ci.high > ci.ratio


def test_rarely_degenerate_resamples_keep_both_bounds_finite() -> None:
    a = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    b = [1.2] * 10
    ci = bootstrap_ratio(a, b, resamples=5000, seed=3)
    assert ci.degenerate == 0 and ci.note is None  # 10 zero draws in a row: (1/10)^10, never seen
    # _bound itself: infinities sort last, a bound beside one is unbounded
    from agent.bench.stats import _bound
    assert _bound([1.0, 2.0, 3.0], 0, 0.5) == 2.0
    assert _bound([1.0, 2.0, 3.0], 1, 0.0) == 1.0
    assert _bound([1.0, 2.0, 3.0], 1, 1.0) is None
    assert _bound([1.0, 2.0, 3.0], 1, 2 / 3) == 3.0  # exactly on the last finite one
    assert _bound([], 3, 0.0) is None
