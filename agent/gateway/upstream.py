"""Who the gateway talks to: the interface between the gateway/telemetry and whatever runs the worker.

The supervisor (agent/worker/supervisor.py) owns the worker process; the gateway only needs three answers, so it
depends on this small protocol instead of on the supervisor's code:

- `base_url()`  -> "http://127.0.0.1:PORT" of the worker right now (it may change across restarts), or None;
- `is_ready()`  -> True while the worker answers requests (False while it starts, loads or restarts);
- `report_failure()` -> the gateway saw a transport failure to the worker (connection refused/reset, or a 503
  "loading" reply): a provider that learns readiness by probing should re-check now; a supervisor may ignore it.

Calls must be cheap and non-blocking (they run on the gateway's event loop). Waiting for readiness is done by the
gateway (`wait_ready`), polling `is_ready()` only while some request is actually held.

`ProbedUpstream` is the provider for standalone use (`hosttune gateway --upstream URL`): it learns readiness from
the worker's `GET /health` (llama-server answers 503 while loading, 200 when ready).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import httpx


@runtime_checkable
class WorkerEndpoint(Protocol):
    def base_url(self) -> str | None: ...

    def is_ready(self) -> bool: ...

    def report_failure(self) -> None: ...


@runtime_checkable
class Watched(Protocol):
    """A provider that needs a background task in the gateway's event loop (e.g. a health probe)."""

    async def watch(self) -> None: ...


async def wait_ready(endpoint: WorkerEndpoint, deadline: float, poll_s: float = 0.05) -> bool:
    """Wait until the endpoint is ready or the monotonic `deadline` passes; True if ready."""
    while True:
        if endpoint.is_ready() and endpoint.base_url():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(poll_s, remaining))


class StaticUpstream:
    """A fixed URL assumed always ready (tests, or a worker managed elsewhere with its own retries)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def base_url(self) -> str | None:
        return self.url

    def is_ready(self) -> bool:
        return True

    def report_failure(self) -> None:
        return None


class SupervisorView(Protocol):
    """What the adapter reads of agent.worker.supervisor.Supervisor (or of a test's stand-in)."""

    @property
    def base_url(self) -> str | None: ...

    @property
    def state(self) -> str: ...

    @property
    def pid(self) -> int | None: ...


class SupervisedWorker:
    """The endpoint of a worker run by agent.worker.supervisor.Supervisor. Ready means the supervisor's state is
    "ready"; it notices a dead worker on its own, so report_failure() has nothing to do (the gateway still checks
    /health before its one retry).

    `SupervisedWorker(supervisor)` follows one supervisor; `SupervisedWorker(current=fn)` asks `fn()` at every call
    for whichever supervisor runs now (None: no URL, not ready), so the daemon's reload, which may replace the
    worker, needs no re-wiring of the gateway and telemetry."""

    def __init__(self, supervisor: SupervisorView | None = None, *,
                 current: Callable[[], SupervisorView | None] | None = None) -> None:
        self._current: Callable[[], SupervisorView | None] = current if current is not None else lambda: supervisor

    def base_url(self) -> str | None:
        sup = self._current()
        url = sup.base_url if sup is not None else None
        return str(url).rstrip("/") if url else None

    def is_ready(self) -> bool:
        sup = self._current()
        return sup is not None and str(getattr(sup.state, "value", sup.state)) == "ready"

    def report_failure(self) -> None:
        return None

    def pid(self) -> int | None:
        sup = self._current()
        pid = sup.pid if sup is not None else None
        return int(pid) if pid else None


class ProbedUpstream:
    """A fixed URL whose readiness comes from GET /health: every `healthy_every_s` while ready, every
    `unhealthy_every_s` (and at once after report_failure) while not. Starts as not ready until the first probe."""

    def __init__(self, url: str, healthy_every_s: float = 2.0, unhealthy_every_s: float = 0.1,
                 probe_timeout_s: float = 1.0) -> None:
        self.url = url.rstrip("/")
        self.healthy_every_s = healthy_every_s
        self.unhealthy_every_s = unhealthy_every_s
        self.probe_timeout_s = probe_timeout_s
        self._ready = False
        self._wake: asyncio.Event | None = None
        self.last_status: int | None = None
        self.transitions = 0

    def base_url(self) -> str | None:
        return self.url

    def is_ready(self) -> bool:
        return self._ready

    def report_failure(self) -> None:
        self._set_ready(False)
        if self._wake is not None:
            self._wake.set()

    def _set_ready(self, ready: bool) -> None:
        if ready != self._ready:
            self.transitions += 1
        self._ready = ready

    async def probe(self, client: httpx.AsyncClient) -> bool:
        try:
            async with client.stream("GET", self.url + "/health", timeout=self.probe_timeout_s) as r:
                self.last_status = r.status_code  # the status is the answer: the body is never read
            ok = r.status_code == 200
        except httpx.HTTPError:
            self.last_status = None
            ok = False
        self._set_ready(ok)
        return ok

    async def watch(self) -> None:
        self._wake = asyncio.Event()
        async with httpx.AsyncClient() as client:
            while True:
                ok = await self.probe(client)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(),
                                           self.healthy_every_s if ok else self.unhealthy_every_s)
