"""The audit log: one JSON line per mutating request (time, method, route, client, status, outcome, detail).

Why an ASGI middleware rather than a per-route call: it also records requests that never reach a route — denied
(401), rejected (413 too large, 422 invalid) — which are exactly the ones an operator wants to see. Routes add
what they did (policy name, number of changes) to `scope["hosttune.audit"]`.

Bounded, because anyone who can reach the port can make a line: every field is capped (a route at
MAX_FIELD_CHARS), requests that did not carry the token are logged at most UNAUTHENTICATED_PER_S a second (the
next one says how many were left out), and the file is rotated at `audit_max_bytes` keeping `audit_keep` old files.
A line is written at once; its fsync happens on a syncer thread, batched, so the event loop never waits on the
disk.
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
AUTHENTICATED_KEY = "hosttune.authenticated"  # set by the token check when the request carried the token
MAX_FIELD_CHARS = 256
MAX_ITEMS = 16
UNAUTHENTICATED_PER_S = 10


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "denied"
    if status < 500:
        return "rejected"
    return "error"


def capped(value: Any, depth: int = 0) -> Any:
    """`value` with every string cut at MAX_FIELD_CHARS and every container at MAX_ITEMS entries, 3 levels deep."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict) and depth < 3:
        return {capped(str(k), depth + 1): capped(v, depth + 1) for k, v in list(value.items())[:MAX_ITEMS]}
    if isinstance(value, list | tuple) and depth < 3:
        return [capped(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
    text = str(value)
    return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + "...(truncated)"


class AuditLog:
    """Append-only JSON lines, file mode 0600, rotated at `max_bytes` (keeping `keep` old files: PATH.1 newest);
    safe to share between threads. Lines are fsynced by a syncer thread, in batches."""

    def __init__(self, path: Path, max_bytes: int = 8 << 20, keep: int = 2) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._unsynced: list[int] = []  # fds with lines not yet fsynced (a rotated one is closed once synced)
        self._closing = False
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size
        self._syncer = threading.Thread(target=self._sync_loop, name="hosttune-audit-sync", daemon=True)
        self._syncer.start()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(capped(record), sort_keys=True, default=str) + "\n").encode()
        with self._lock:
            if self._fd < 0:
                return
            if self._size > 0 and self._size + len(line) > self.max_bytes:
                self._rotate()
            os.write(self._fd, line)
            self._size += len(line)
            if self._fd not in self._unsynced:
                self._unsynced.append(self._fd)
            self._wake.notify()

    def _rotate(self) -> None:
        """PATH -> PATH.1 -> ... -> PATH.<keep> (the oldest dropped). Called with the lock held."""
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        old = self._fd
        self._fd = self._open()
        self._size = 0
        if old not in self._unsynced:
            self._unsynced.append(old)
        self._unsynced.append(-old - 1)  # marker: close `old` after its fsync

    def _sync_loop(self) -> None:
        while True:
            with self._lock:
                while not self._unsynced and not self._closing:
                    self._wake.wait()
                if not self._unsynced and self._closing:
                    return
                batch, self._unsynced = self._unsynced, []
                # fsync a duplicate outside the lock: writers never wait for the disk
                work = [(fd, os.dup(fd)) for fd in batch if fd >= 0]
                to_close = [-fd - 1 for fd in batch if fd < 0]
            for _fd, dup in work:
                try:
                    os.fsync(dup)
                finally:
                    os.close(dup)
            for fd in to_close:
                os.close(fd)

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every line written so far is fsynced (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._unsynced:
                    return
            time.sleep(0.005)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._syncer.join(5.0)
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


class UnauthenticatedBudget:
    """At most `per_s` audit lines a second for requests without the token; counts the ones left out."""

    def __init__(self, per_s: int = UNAUTHENTICATED_PER_S) -> None:
        self.per_s = per_s
        self.second = 0
        self.used = 0
        self.left_out = 0

    def take(self, now: float) -> int | None:
        """None: leave this line out; else the number of lines left out before it."""
        second = int(now)
        if second != self.second:
            self.second, self.used = second, 0
        if self.used >= self.per_s:
            self.left_out += 1
            return None
        self.used += 1
        left_out, self.left_out = self.left_out, 0
        return left_out


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
        self.budget = UnauthenticatedBudget()

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
        recorded = False

        def record() -> None:
            nonlocal recorded
            if recorded or audit is None:
                return
            recorded = True
            left_out = 0 if scope.get(AUTHENTICATED_KEY) else self.budget.take(time.monotonic())
            if left_out is None:
                return
            audit.write({
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "method": scope["method"],
                "route": scope["path"],
                "client": client_of(scope),
                "status": status,
                "outcome": outcome_of(status),
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
                **({"detail": detail} if detail else {}),
                **({"unauthenticated_left_out": left_out} if left_out else {}),
            })

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()  # before the client has its whole answer: an answered request is an audited one
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            record()
