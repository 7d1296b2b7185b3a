"""The admission gate on its own: limit, FIFO order, bounded queue, timeout, run-time limit changes."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from agent.gateway.admission import AdmissionGate, Rejected


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_limit_is_never_exceeded_and_all_complete() -> None:
    gate = AdmissionGate(limit=2, max_queue=100)
    peak = 0
    active = 0

    async def worker() -> None:
        nonlocal peak, active
        await gate.acquire(time.monotonic() + 5)
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        gate.release()

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(10)))

    run(main())
    assert peak == 2
    assert gate.in_flight == 0 and gate.queued == 0


def test_waiters_are_admitted_in_arrival_order() -> None:
    gate = AdmissionGate(limit=1, max_queue=100)
    order: list[int] = []

    async def main() -> None:
        await gate.acquire(time.monotonic() + 5)  # hold the only slot

        async def waiter(i: int) -> None:
            await gate.acquire(time.monotonic() + 5)
            order.append(i)
            gate.release()

        tasks = []
        for i in range(6):
            tasks.append(asyncio.ensure_future(waiter(i)))
            await asyncio.sleep(0)  # let it enqueue before the next arrives
        assert gate.queued == 6
        gate.release()
        await asyncio.gather(*tasks)

    run(main())
    assert order == [0, 1, 2, 3, 4, 5]


def test_full_queue_rejects_at_once() -> None:
    gate = AdmissionGate(limit=1, max_queue=2)

    async def main() -> str:
        await gate.acquire(time.monotonic() + 5)
        waiters = [asyncio.ensure_future(gate.acquire(time.monotonic() + 5)) for _ in range(2)]
        await asyncio.sleep(0)
        t0 = time.monotonic()
        try:
            await gate.acquire(time.monotonic() + 5)
        except Rejected as r:
            assert time.monotonic() - t0 < 0.5  # did not wait for the 5 s deadline
            for w in waiters:
                w.cancel()
            return r.reason
        raise AssertionError("third waiter was admitted")

    assert run(main()) == "queue_full"


def test_queue_timeout_rejects_after_the_deadline_and_frees_the_place() -> None:
    gate = AdmissionGate(limit=1, max_queue=1)

    async def main() -> tuple[str, float]:
        await gate.acquire(time.monotonic() + 5)
        t0 = time.monotonic()
        with pytest.raises(Rejected) as info:
            await gate.acquire(t0 + 0.2)
        waited = time.monotonic() - t0
        assert gate.queued == 0
        # the timed-out waiter must not have taken the slot when it is released later
        gate.release()
        await gate.acquire(time.monotonic() + 0.1)
        assert gate.in_flight == 1
        return info.value.reason, waited

    reason, waited = run(main())  # type: ignore[misc]
    assert reason == "queue_timeout"
    assert waited >= 0.2


def test_raising_the_limit_admits_waiters_lowering_it_holds_newcomers() -> None:
    gate = AdmissionGate(limit=1, max_queue=10)

    async def main() -> None:
        await gate.acquire(time.monotonic() + 5)
        waiters = [asyncio.ensure_future(gate.acquire(time.monotonic() + 5)) for _ in range(3)]
        await asyncio.sleep(0)
        assert gate.queued == 3
        gate.set_limit(3)
        assert gate.in_flight == 3 and gate.queued == 1  # granted synchronously, in order
        await asyncio.sleep(0.01)
        assert [w.done() for w in waiters] == [True, True, False]
        gate.set_limit(1)
        for _ in range(2):
            gate.release()
        await asyncio.sleep(0.01)
        assert gate.in_flight == 1 and not waiters[2].done()  # still at the new limit
        gate.release()
        await asyncio.sleep(0.01)
        assert waiters[2].done() and gate.in_flight == 1

    run(main())


def test_set_limit_from_another_thread_wakes_waiters() -> None:
    gate = AdmissionGate(limit=1, max_queue=10)

    async def main() -> float:
        await gate.acquire(time.monotonic() + 5)
        t0 = time.monotonic()
        waiter = asyncio.ensure_future(gate.acquire(t0 + 5))
        await asyncio.sleep(0)
        threading.Timer(0.1, gate.set_limit, args=(2,)).start()
        await waiter
        return time.monotonic() - t0

    waited = run(main())
    assert isinstance(waited, float) and 0.1 <= waited < 4


def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    gate = AdmissionGate(limit=1, max_queue=10)

    async def main() -> None:
        await gate.acquire(time.monotonic() + 5)
        w = asyncio.ensure_future(gate.acquire(time.monotonic() + 5))
        await asyncio.sleep(0)
        w.cancel()
        await asyncio.sleep(0)
        gate.release()
        assert gate.in_flight == 0
        await gate.acquire(time.monotonic() + 0.1)  # fast path still works
        assert gate.in_flight == 1

    run(main())


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        AdmissionGate(limit=0, max_queue=1)
    gate = AdmissionGate(limit=1, max_queue=1)
    with pytest.raises(ValueError):
        gate.set_limit(0)
    with pytest.raises(RuntimeError):
        gate.release()
