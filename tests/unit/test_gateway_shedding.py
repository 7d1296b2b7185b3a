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


def test_in_flight_above_a_lowered_limit_is_still_ahead_of_a_newcomer() -> None:
    assert predicted_wait_s(queued=0, in_flight=4, limit=2, service_s=2.0) == 3.0  # two beyond + itself, 2 at once
    assert predicted_wait_s(queued=1, in_flight=3, limit=2, service_s=2.0) == 3.0


def test_shedding_caps_admission_at_the_llama_server_slots_whatever_the_limit() -> None:
    """The controller's fast lever may raise the limit above the slots; with shedding on, a request beyond them
    would wait inside llama-server where shedding cannot see it, so the gate admits at most the slots."""
    from agent.policy.model import SloSpec, WorkerSpec

    gate = AdmissionGate(limit=8, max_queue=10)
    current = {"slo": SloSpec(ttft_p95_ms=2000, shed=True)}
    lv = Levers()
    lv.follow(lambda: (WorkerSpec(engine="llamacpp", parallel=4), current["slo"]))
    assert lv.ceiling() == 4
    assert lv.shed(gate) is None  # nothing learnt yet: no prediction, but the ceiling is set
    assert gate.effective_limit == 4 and gate.limit == 8
    current["slo"] = SloSpec(ttft_p95_ms=2000)  # shedding off: the limit alone decides again
    lv.shed(gate)
    assert lv.ceiling() is None and gate.effective_limit == 8


def test_no_ceiling_for_an_engine_whose_concurrency_is_not_a_slot_count() -> None:
    from agent.policy.model import SloSpec, WorkerSpec

    lv = Levers()
    lv.follow(lambda: (WorkerSpec(engine="torch", parallel=8), SloSpec(ttft_p95_ms=2000, shed=True)))
    gate = AdmissionGate(limit=8, max_queue=10)
    lv.shed(gate)
    assert lv.ceiling() is None and gate.effective_limit == 8


def test_raising_or_removing_the_ceiling_admits_waiters_at_once() -> None:
    import asyncio
    import time

    async def scenario() -> None:
        gate = AdmissionGate(limit=3, max_queue=10)
        gate.set_ceiling(1)
        await gate.acquire(time.monotonic() + 1)
        waiter = asyncio.ensure_future(gate.acquire(time.monotonic() + 5))
        await asyncio.sleep(0.05)
        assert not waiter.done() and gate.queued == 1
        gate.set_ceiling(None)
        await asyncio.wait_for(waiter, 1)
        assert gate.in_flight == 2
        with pytest.raises(ValueError):
            gate.set_ceiling(0)

    asyncio.run(scenario())
