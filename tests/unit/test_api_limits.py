"""The API under a local user without the token (issue 14): the token is checked before a body is read, the
audit log is bounded (capped fields, rotation, a budget for unauthenticated lines, fsync off the caller's thread),
and GET /v1/status is an async route over a snapshot shared by concurrent readers and invalidated by mutations."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agent.api import create_app
from agent.api import snapshot as snapshot_mod
from agent.api.audit import MAX_FIELD_CHARS, AuditLog, UnauthenticatedBudget
from agent.api.routers import tuning
from agent.api.snapshot import Snapshot, SnapshotReads
from agent.config import DaemonSettings
from agent.daemon.services import Services
from agent.hostfs import HostPaths
from tests.support.daemon_fixtures import ROUND_TRIP_POLICY, MainThreadClient, main_thread_client, settings_for

pytestmark = pytest.mark.usefixtures("no_daemon_env_overrides")


@pytest.fixture
def settings(host: HostPaths, tmp_path: Path) -> DaemonSettings:
    return settings_for(host, tmp_path)


def audit_records(settings: DaemonSettings) -> list[dict[str, Any]]:
    return [json.loads(line) for line in settings.audit_path.read_text().splitlines()]


async def _call(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes,
                chunk: int = 65536) -> tuple[int, int]:
    """One request through the raw ASGI interface: (status, how many times the app called receive())."""
    calls = 0
    chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls <= len(chunks):
            return {"type": "http.request", "body": chunks[calls - 1], "more_body": calls < len(chunks)}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    status = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "headers": [(b"host", b"localhost"), *headers], "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 7711)}
    await app(scope, receive, send)
    return status, calls


def test_a_body_without_the_token_is_never_read(settings: DaemonSettings) -> None:
    """Before: the body limit buffered up to max_body_bytes (1 MiB) before the token was looked at."""
    app = create_app(settings, Services(settings))
    mib = b'{"yaml": "' + b"x" * (1 << 20) + b'"}'
    chunked = [(b"content-type", b"application/json")]  # no content-length: the body limit would read it all
    with TestClient(app):  # runs the lifespan: the token is loaded
        token = settings.token_path.read_text().strip()
        for auth in ([], [(b"authorization", b"Bearer wrong-token-wrong-token")]):
            status, calls = asyncio.run(_call(app, "POST", "/v1/apply", chunked + auth, mib))
            assert (status, calls) == (401, 0)
        # with the token the same body is read (and refused by the limit: more than 1 MiB)
        good = [(b"authorization", f"Bearer {token}".encode())]
        status, calls = asyncio.run(_call(app, "POST", "/v1/apply", chunked + good, mib))
        assert status == 413 and calls > 1


def test_audit_fields_are_capped(settings: DaemonSettings) -> None:
    with main_thread_client(settings) as client:
        r = client.post("/v1/" + "a" * 20_000, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
    records = audit_records(settings)
    assert len(records) == 1 and records[0]["outcome"] == "denied"
    assert len(records[0]["route"]) <= MAX_FIELD_CHARS + len("...(truncated)")
    assert len(settings.audit_path.read_bytes()) < 1024


def test_audit_log_rotates_at_its_size_cap(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, max_bytes=64 << 10, keep=2)
    try:
        for i in range(2000):  # ~300 KB of lines: more than (keep + 1) x max_bytes
            log.write({"i": i, "route": "/v1/apply", "pad": "p" * 100})
    finally:
        log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2"]
    for name in files:
        size = (tmp_path / name).stat().st_size
        assert 0 < size <= 64 << 10
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    last = [json.loads(x) for x in path.read_text().splitlines()]
    assert last[-1]["i"] == 1999  # the newest lines are in the live file, whole
    older = [json.loads(x) for x in (tmp_path / "audit.log.1").read_text().splitlines()]
    assert older[-1]["i"] == last[0]["i"] - 1


def test_audit_fsync_runs_off_the_writing_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The middleware writes on the event loop: the fsync must happen elsewhere (before: os.fsync per line, on
    the loop)."""
    synced_on: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced_on.append(threading.get_ident())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    log = AuditLog(tmp_path / "audit.log")
    try:
        for i in range(20):
            log.write({"i": i})
        assert len((tmp_path / "audit.log").read_text().splitlines()) == 20  # written at once
        log.flush()
        assert synced_on and threading.get_ident() not in synced_on
    finally:
        log.close()


def test_unauthenticated_audit_lines_have_a_budget() -> None:
    budget = UnauthenticatedBudget(per_s=3)
    taken = [budget.take(100.0 + i * 0.01) for i in range(10)]
    assert taken == [0, 0, 0] + [None] * 7
    assert budget.take(101.0) == 7  # the next second's first line says how many were left out
    assert budget.take(101.1) == 0


def test_a_flood_without_the_token_writes_a_bounded_audit(settings: DaemonSettings) -> None:
    with main_thread_client(settings) as client:
        for _ in range(60):
            client.post("/v1/revert", headers={"Authorization": "Bearer nope"})
        client.post("/v1/revert")  # with the token: always audited
    records = audit_records(settings)
    denied = [r for r in records if r["outcome"] == "denied"]
    assert 1 <= len(denied) < 60  # at most 10 a second were kept
    assert records[-1]["outcome"] == "ok" and records[-1]["route"] == "/v1/revert"


def test_status_route_is_async_over_the_snapshot(settings: DaemonSettings) -> None:
    """Before: a plain `def` route computing the status per request on the thread pool."""
    assert inspect.iscoroutinefunction(tuning.status)
    services = Services(settings)
    calls = 0
    real_status = services.status

    def counting_status() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return real_status()

    services.status = counting_status  # type: ignore[method-assign]
    app = create_app(settings, services)
    with TestClient(app) as client:
        app.state.status_snapshot.max_age_s = 3600.0  # a loaded machine must not make this test see an expiry
        client.headers["Authorization"] = "Bearer " + settings.token_path.read_text().strip()
        bodies = [client.get("/v1/status").json() for _ in range(5)]
    assert calls == 1 and all(b == bodies[0] for b in bodies) and "daemon" in bodies[0]


def test_concurrent_readers_share_one_computation() -> None:
    calls = 0
    generation = 0

    def compute() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        threading.Event().wait(0.05)  # a slow journal read
        return {"n": calls}

    snap = Snapshot(compute, lambda: generation, max_age_s=60)

    async def readers() -> list[bytes]:
        return await asyncio.gather(*(snap.get() for _ in range(200)))

    bodies = asyncio.run(readers())
    assert calls == 1 and set(bodies) == {b'{"n": 1}'}
    generation += 1  # a mutation: the next reader gets a fresh document
    assert asyncio.run(snap.get()) == b'{"n": 2}'
    assert asyncio.run(snap.get()) == b'{"n": 2}'


def test_snapshot_age_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(snapshot_mod.time, "monotonic", lambda: now[0])
    counter = iter(range(100))
    snap = Snapshot(lambda: {"n": next(counter)}, lambda: 0, max_age_s=1.0)
    assert asyncio.run(snap.get()) == b'{"n": 0}'
    now[0] += 0.5
    assert asyncio.run(snap.get()) == b'{"n": 0}'
    now[0] += 0.6  # 1.1 s old: recomputed
    assert asyncio.run(snap.get()) == b'{"n": 1}'


@pytest.fixture
def client(settings: DaemonSettings) -> Iterator[MainThreadClient]:
    with main_thread_client(settings) as c:
        yield c


def test_status_is_fresh_after_apply_and_revert(client: MainThreadClient, settings: DaemonSettings) -> None:
    """The snapshot is shared, never stale across a mutation: apply and revert invalidate it at once."""
    before = client.get("/v1/status").json()
    assert client.get("/v1/status").json() == before
    assert client.post("/v1/apply", json={"yaml": ROUND_TRIP_POLICY}).status_code == 200
    applied = client.get("/v1/status").json()
    assert applied != before and applied["daemon"]["policy_ref"] is not None
    assert client.post("/v1/revert").status_code == 200
    reverted = client.get("/v1/status").json()
    assert reverted["daemon"]["policy_ref"] is None and reverted != applied


def test_snapshot_reads_answer_status_in_front_of_the_router() -> None:
    """GET /v1/status is answered from the snapshot without FastAPI's routing; anything else passes through."""
    passed: list[str] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        passed.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    class State:
        status_snapshot = Snapshot(lambda: {"applied": None}, lambda: 0)

    class App:
        state = State()

    async def go(method: str, path: str) -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": method, "path": path, "app": App(), "headers": []}
        await SnapshotReads(inner)(scope, receive, send)
        return sent[0]["status"], sent[1].get("body", b"")

    assert asyncio.run(go("GET", "/v1/status")) == (200, b'{"applied": null}')
    assert asyncio.run(go("POST", "/v1/status"))[0] == 204
    assert asyncio.run(go("GET", "/v1/statusx"))[0] == 204
    assert passed == ["POST /v1/status", "GET /v1/statusx"]
