"""Load shedding decisions: a pure function of the gate's state, the recent service time and the budget."""

from __future__ import annotations

import math

import pytest

from agent.gateway.admission import AdmissionGate
from agent.gateway.levers import Levers
from agent.gateway.shedding import MIN_SAMPLES, ServiceClock, predicted_wait_s, shed_retry_after


def test_predicted_wait_is_queue_times_service_over_limit() -> None:
    assert predicted_wait_s(queued=0, in_flight=1, limit=2, service_s=4.0) == 0.0  # admitted at once
    assert predicted_wait_s(queued=0, in_flight=2, limit=2, service_s=4.0) == 2.0
    assert predicted_wait_s(queued=3, in_flight=2, limit=2, service_s=4.0) == 8.0
    assert predicted_wait_s(queued=9, in_flight=4, limit=4, service_s=None) == 0.0  # nothing known yet


@pytest.mark.parametrize(("queued", "budget", "expected"), [
    (0, 2.0, None),     # wait 1 s (one ahead of two slots of 2 s): under the budget
    (1, 2.0, None),     # wait exactly the budget: kept
    (2, 2.0, 3),        # 3 s > 2 s: shed, retry in 3 s
    (200, 2.0, 60),     # the hint is capped
    (2, None, None),    # shedding off
])
def test_shed_above_the_budget_with_the_wait_as_retry_after(queued: int, budget: float | None,
                                                            expected: int | None) -> None:
    assert shed_retry_after(queued, in_flight=2, limit=2, service_s=2.0, budget_s=budget) == expected


def test_service_clock_needs_samples_and_ignores_nonsense() -> None:
    c = ServiceClock(window=4)
    for _ in range(MIN_SAMPLES - 1):
        c.record(1.0)
    assert c.estimate() is None
    c.record(math.nan)
    c.record(-1.0)
    assert c.estimate() is None
    c.record(4.0)
    assert c.estimate() == pytest.approx((MIN_SAMPLES - 1 + 4.0) / MIN_SAMPLES)
    for _ in range(4):
        c.record(2.0)
    assert c.estimate() == 2.0  # the window forgets old times
    c.clear()
    assert c.estimate() is None


def test_levers_shed_counts_and_needs_a_positive_budget() -> None:
    gate = AdmissionGate(limit=1, max_queue=10)
    gate._in_flight = 1  # one in service, nothing queued: a newcomer waits one service time
    lv = Levers(shed_budget_s=0.5)
    for _ in range(MIN_SAMPLES):
        lv.done(None, 1.0)
    assert lv.shed(gate) == 1 and lv.shed_total == 1
    lv.configure(lv.shaping, 5.0)
    assert lv.shed(gate) is None and lv.shed_total == 1
    with pytest.raises(ValueError):
        lv.configure(lv.shaping, 0.0)


def test_levers_forget_service_times_when_the_worker_spec_changes_even_at_the_same_slot_count() -> None:
    from agent.policy.model import WorkerSpec

    current = {"spec": WorkerSpec(parallel=2, threads=4)}
    lv = Levers()
    lv.follow(lambda: (current["spec"], None))
    for _ in range(MIN_SAMPLES):
        lv.done(None, 1.0)
    assert lv.service.estimate() == 1.0
    lv._refresh()  # the same spec object: what was learned stays
    assert lv.service.estimate() == 1.0
    current["spec"] = WorkerSpec(parallel=2, threads=8)  # the controller moved threads, not parallel
    lv._refresh()
    assert lv.service.estimate() is None
