"""The admission limit: at most `limit` requests in flight to the worker, the rest wait in a bounded FIFO queue.

Why a gate in front of llama-server: past its slot count the worker defers requests internally, where nobody can
see or bound the wait; queueing here makes queue time measurable, lets the controller trade concurrency against
TTFT by moving one number (`set_limit`, callable from any thread), and lets us answer 503 + Retry-After instead
of letting clients pile up. Fairness is strict FIFO: a newcomer never overtakes a waiter, even when a slot is free
at the instant it arrives.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque


class Rejected(Exception):
    """Admission refused: `reason` is "queue_full", "queue_timeout" or "not_ready"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AdmissionGate:
    def __init__(self, limit: int, max_queue: int) -> None:
        if limit < 1:
            raise ValueError("admission limit must be at least 1")
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self._limit = limit
        self._ceiling: int | None = None
        self.max_queue = max_queue
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def effective_limit(self) -> int:
        """How many requests are admitted at once: the limit, or the ceiling when one is set and lower."""
        return self._limit if self._ceiling is None else min(self._limit, self._ceiling)

    def set_ceiling(self, ceiling: int | None) -> None:
        """Admit at most `ceiling` at once whatever the limit says (None: no ceiling). Call it on the gate's loop
        (the proxy does, per request); raising or removing it admits waiters at once."""
        if ceiling is not None and ceiling < 1:
            raise ValueError("admission ceiling must be at least 1")
        if ceiling != self._ceiling:
            self._ceiling = ceiling
            self._grant()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    def gauges(self) -> tuple[int, int, int]:
        return self._in_flight, self.queued, self._limit

    def set_limit(self, limit: int) -> None:
        """Change the limit now. Raising it admits waiters at once; lowering it lets in-flight requests finish
        and admits no one until in-flight drops below the new limit. Safe to call from another thread."""
        if limit < 1:
            raise ValueError("admission limit must be at least 1")
        loop = self._loop
        if loop is not None and self._loop_thread != threading.get_ident() and not loop.is_closed():
            loop.call_soon_threadsafe(self._apply_limit, limit)
            self._limit = limit  # visible to readers at once; waiters are granted on the loop
        else:
            self._apply_limit(limit)

    def _apply_limit(self, limit: int) -> None:
        self._limit = limit
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._in_flight < self.effective_limit:
            fut = self._waiters.popleft()
            if fut.done():
                continue
            self._in_flight += 1
            fut.set_result(None)

    async def acquire(self, deadline: float) -> None:
        """Take a slot, waiting in FIFO order until the monotonic `deadline`. Raises Rejected."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
        queued = self.queued
        if queued == 0 and self._in_flight < self.effective_limit:
            self._in_flight += 1
            return
        if queued >= self.max_queue:
            raise Rejected("queue_full")
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(fut)
        self._grant()  # a slot may be free behind stale (cancelled) waiters
        try:
            # loop: some event loops (uvloop) round timers to the millisecond and wake a little early
            while not fut.done() and (remaining := deadline - time.monotonic()) > 0:
                await asyncio.wait([fut], timeout=remaining)
        except BaseException:
            # cancelled while queued (client went away): give back a slot granted in the meantime
            if fut.done() and not fut.cancelled():
                self.release()
            else:
                fut.cancel()
                self._drop_cancelled()
            raise
        if fut.done() and not fut.cancelled():
            return
        fut.cancel()
        self._drop_cancelled()
        raise Rejected("queue_timeout")

    def _drop_cancelled(self) -> None:
        self._waiters = deque(f for f in self._waiters if not f.done())

    def release(self) -> None:
        if self._in_flight <= 0:
            raise RuntimeError("release() without acquire()")
        self._in_flight -= 1
        self._grant()
