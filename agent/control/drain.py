"""Drain before a restart, so that a knob change loses no request.

llama-server stops answering at once on SIGTERM: a reply being streamed is cut, and the gateway can only retry a
request that failed before its first byte. So before a controller-initiated restart the gateway stops sending new
work (the endpoint reads as not ready, so requests are held, exactly as during a restart), the worker finishes what
it is generating (its /slots show no busy slot), and only then is it restarted. Requests held meanwhile go out to
the new worker when it is ready.

`DrainingEndpoint` wraps whatever endpoint the gateway uses (agent.gateway.upstream.WorkerEndpoint); the
RestartActuator sets the drain when it has one.
"""

from __future__ import annotations

import threading

import httpx

from agent.gateway.upstream import WorkerEndpoint


class Drain:
    def __init__(self) -> None:
        self._active = threading.Event()

    @property
    def active(self) -> bool:
        return self._active.is_set()

    def begin(self) -> None:
        self._active.set()

    def end(self) -> None:
        self._active.clear()

    def wrap(self, endpoint: WorkerEndpoint) -> DrainingEndpoint:
        return DrainingEndpoint(endpoint, self)


class DrainingEndpoint:
    """The wrapped endpoint, reading as not ready while the drain is on."""

    def __init__(self, inner: WorkerEndpoint, drain: Drain) -> None:
        self.inner = inner
        self.drain = drain

    def base_url(self) -> str | None:
        return self.inner.base_url()

    def is_ready(self) -> bool:
        return not self.drain.active and self.inner.is_ready()

    def report_failure(self) -> None:
        self.inner.report_failure()

    def pid(self) -> int | None:
        pid = getattr(self.inner, "pid", None)
        return pid() if callable(pid) else pid

    async def watch(self) -> None:
        """Forward a probing endpoint's background task (agent.gateway.upstream.Watched)."""
        watch = getattr(self.inner, "watch", None)
        if watch is not None:
            await watch()


def busy_slots(base_url: str | None, timeout_s: float = 1.0) -> int | None:
    """Requests llama-server is processing now, from /slots; None when it cannot tell (no URL, --no-slots, down)."""
    if not base_url:
        return None
    try:
        r = httpx.get(base_url.rstrip("/") + "/slots", timeout=timeout_s, trust_env=False)
        if r.status_code != 200:
            return None
        slots = r.json()
        return sum(1 for s in slots if isinstance(s, dict) and s.get("is_processing"))
    except (httpx.HTTPError, ValueError):
        return None
