"""The audit log: one JSON line per mutating request (time, method, route, client, status, outcome, detail).

Why an ASGI middleware rather than a per-route call: it also records requests that never reach a route — denied
(401), rejected (413 too large, 422 invalid) — which are exactly the ones an operator wants to see. Routes add
what they did (policy name, number of changes) to `scope["hosttune.audit"]`. Each line is fsynced: mutations are
rare, and an audit trail that loses its last line on a crash is not one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SCOPE_KEY = "hosttune.audit"


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "denied"
    if status < 500:
        return "rejected"
    return "error"


class AuditLog:
    """Append-only JSON lines, file mode 0600, one fsync per record; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def client_of(scope: Scope) -> str:
    client = scope.get("client")
    if not client or not client[0]:
        return "unix"  # uvicorn reports no peer address on a unix socket
    return f"{client[0]}:{client[1]}"


class AuditMiddleware:
    """Writes an audit record for every non-GET HTTP request, whatever its outcome."""

    def __init__(self, app: ASGIApp, audit: AuditLog | None = None) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        audit: AuditLog | None = self.audit
        if audit is None:
            app = scope.get("app")
            audit = getattr(getattr(app, "state", None), "audit", None)
        detail: dict[str, Any] = {}
        scope[SCOPE_KEY] = detail
        status = 500
        started = time.monotonic()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if audit is not None:
                audit.write({
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "method": scope["method"],
                    "route": scope["path"],
                    "client": client_of(scope),
                    "status": status,
                    "outcome": outcome_of(status),
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                    **({"detail": detail} if detail else {}),
                })
