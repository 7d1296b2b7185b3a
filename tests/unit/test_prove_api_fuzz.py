"""API fuzzing with schemathesis against the daemon app's own OpenAPI document (issue 10).

The app is the real one (agent.api.create_app over agent.daemon.services.Services) on a copy of the fixture
"server" host tree, called in-process through ASGI, and (bounded, last test) `hosttune daemon` as a process behind
its real uvicorn. Every operation of /openapi.json gets generated requests:
- with the daemon's token: no response is a 5xx (bad input is 4xx; a refused host write is 409), but for the
  designed 503 of restarting a worker this daemon does not supervise;
- with or without it: every response's body and content type match what the document declares for its status
  (each route's response_model, and the one error shape);
- without a token, or with a generated one: no response is a 5xx, every /v1 route answers 401/403 (or 413 for
  a body over the limit, refused before anything reads it), and neither
  the host tree nor the state dir (journal, applied policy) changes by a single byte.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from apscheduler.schedulers.background import BackgroundScheduler
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, response_schema_conformance

from agent.api import create_app
from agent.api.app import v1_router
from agent.api.routers import health
from agent.bench.llama_local import free_port
from agent.config import DaemonSettings
from agent.daemon.services import Services
from agent.hostfs import HostPaths
from tests.support.daemon_fixtures import DaemonProcess, no_gpu_sim, settings_for, write_config
from tests.support.trees import tree_state

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HOSTTUNE_"):
            monkeypatch.delenv(name)


class Daemon:
    def __init__(self, host: HostPaths, tmp_path: Path) -> None:
        self.host = host
        self.settings: DaemonSettings = settings_for(host, tmp_path, api={"max_body_bytes": 65536})
        services = Services(self.settings)
        # Telemetry as the running daemon has it (jobs registered; the scheduler is never started, so the ring
        # buffer stays empty and nothing samples the real machine).
        services.register_jobs(BackgroundScheduler())
        self.app: FastAPI = create_app(self.settings, services)
        self.root = host.procfs.parent

    @property
    def token(self) -> str:
        return self.settings.token_path.read_text().strip()

    def snapshot(self) -> dict[str, bytes]:
        """Host tree and state dir, minus the audit log (refused requests are audited: that is not a mutation)."""
        state = {f"state/{k}": v for k, v in tree_state(self.settings.state_dir).items()}
        audit = os.path.relpath(self.settings.audit_path, self.settings.state_dir)
        state.pop(f"state/{audit}", None)
        return {**tree_state(self.root), **state}


@pytest.fixture
def daemon(host: HostPaths, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(host, tmp_path)
    yield d


def _operations() -> list[tuple[str, str]]:
    """(METHOD, path) of every operation the app's OpenAPI document lists (routes only: no services needed)."""
    app = FastAPI()
    app.include_router(health.router)
    app.include_router(v1_router())
    return sorted((m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops)


OPERATIONS = _operations()


def cases(daemon: Daemon, operation: tuple[str, str]) -> st.SearchStrategy[Any]:
    """Cases for one operation of the app's own OpenAPI document: valid ones and, as often, invalid ones. Each
    operation is its own test (not drawn at random: a random draw left a route unreached in one CI run)."""
    method, path = operation
    op = schemathesis.openapi.from_asgi("/openapi.json", daemon.app)[path][method]
    return st.one_of(op.as_strategy(generation_mode=GenerationMode.POSITIVE),
                     op.as_strategy(generation_mode=GenerationMode.NEGATIVE))


# Bounded: 12 examples per operation and mode keep the file well under a minute on 2 loaded cores. The daemon
# fixture is made once per test (not per example): state carries over between examples, as in a running daemon.
FUZZ = settings(max_examples=12, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much, HealthCheck.data_too_large])
SEEN: dict[str, set[str]] = {}
PER_OPERATION = pytest.mark.parametrize("operation", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])


def _label(case: Any) -> str:
    return f"{case.method} {case.path}"


CONFORMANCE = [response_schema_conformance, content_type_conformance]
"""The reply is what /openapi.json says it is: its body validates against the schema declared for its status."""


def server_error(case: Any, response: Any) -> bool:
    """A 5xx, except the one designed 503: this fixture daemon supervises no worker, and restarting an absent
    worker answers 503 {"error": "unavailable"} (as a daemon started with the worker disabled does)."""
    if response.status_code < 500:
        return False
    if response.status_code == 503 and _label(case) == "POST /v1/worker/restart":
        return bool(response.json().get("error") != "unavailable")
    return True


@PER_OPERATION
@FUZZ
@given(data=st.data())
def test_with_token_no_5xx(daemon: Daemon, operation: tuple[str, str], data: st.DataObject) -> None:
    case = data.draw(cases(daemon, operation))
    response = case.call(headers={**(case.headers or {}), "Authorization": f"Bearer {daemon.token}"})
    SEEN.setdefault("token", set()).add(_label(case))
    assert not server_error(case, response), (_label(case), response.status_code, response.text[:300])
    case.validate_response(response, checks=CONFORMANCE)


@PER_OPERATION
@FUZZ
@given(data=st.data())
def test_without_valid_token_no_5xx_and_no_mutation(daemon: Daemon, operation: tuple[str, str],
                                                    data: st.DataObject) -> None:
    case = data.draw(cases(daemon, operation))
    headers = dict(case.headers or {})
    if headers.get("Authorization", "").strip() == f"Bearer {daemon.token}":
        headers.pop("Authorization")
    if data.draw(st.booleans()):
        headers["Authorization"] = data.draw(st.sampled_from(["Bearer ", "Bearer x", "Basic abc", "bearer",
                                                              f"Bearer {daemon.token[:-1]}", "Bearer \u00e9"]))
    case.headers = headers
    before = daemon.snapshot()
    response = case.call()
    SEEN.setdefault("no-token", set()).add(_label(case))
    assert not server_error(case, response), (_label(case), response.status_code, response.text[:300])
    case.validate_response(response, checks=CONFORMANCE)
    if case.path.startswith("/v1"):
        # the token is checked before anything reads the body: no 413 or 422 without it (issue 14)
        assert response.status_code in (401, 403), (_label(case), response.status_code)
    assert daemon.snapshot() == before, _label(case)


def test_fuzzing_reached_the_mutating_routes(request: pytest.FixtureRequest) -> None:
    """Runs after the two tests above (file order): they really sent requests to every route, those that write
    included (when the whole file runs; a `-k` selection of some operations skips this check)."""
    selected = {item.name for item in request.session.items}
    for mode, test in (("token", "test_with_token_no_5xx"),
                       ("no-token", "test_without_valid_token_no_5xx_and_no_mutation")):
        if any(f"{test}[{m} {p}]" not in selected for m, p in OPERATIONS):
            pytest.skip(f"{test} did not run for every operation in this session")
        reached = SEEN.get(mode, set())
        assert {"POST /v1/apply", "POST /v1/revert", "POST /v1/worker/restart"} <= reached, (mode, reached)
        assert {f"{m} {p}" for m, p in OPERATIONS} == reached, (mode, reached)


def test_schema_covers_the_mutating_routes(daemon: Daemon) -> None:
    """The fuzzing above is only as wide as the schema: it must list the routes that write to the host."""
    paths = schemathesis.openapi.from_asgi("/openapi.json", daemon.app).raw_schema["paths"]
    assert {"/v1/apply", "/v1/revert", "/v1/plan", "/v1/worker/restart", "/v1/status"} <= set(paths)


def test_malformed_body_without_token_is_401_not_422(daemon: Daemon) -> None:
    """Found by the fuzzing above: FastAPI parsed the body before the auth dependency ran, so a caller without a
    token got 422 with validation details. Now /v1 answers 401 first, whatever the body."""
    from fastapi.testclient import TestClient

    with TestClient(daemon.app) as client:
        for body in (b"{", b"[]", b'{"yaml": 5}'):
            r = client.post("/v1/apply", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 401, (body, r.status_code, r.text)
            assert r.headers.get("WWW-Authenticate") == "Bearer"
        # A body FastAPI cannot parse at all (it answers 400 before any dependency runs; a CI run found it): 401.
        r = client.post("/v1/plan", content=b"\xff\xfe", headers={"Content-Type": "application/json"})
        assert r.status_code == 401, (r.status_code, r.text)
        good = {"Authorization": f"Bearer {daemon.token}", "Content-Type": "application/json"}
        assert client.post("/v1/apply", content=b"{", headers=good).status_code == 422


@pytest.mark.process
def test_real_daemon_fuzz_no_5xx_and_no_mutation_without_the_token(host: HostPaths, tmp_path: Path) -> None:
    """The same two properties against `hosttune daemon` as a process: its real uvicorn, the request guard (Host,
    URL and header limits), the token check before the body, the main-thread mutations. Bounded: 3 examples per
    operation, each sent with or without the token (drawn)."""
    port = free_port()
    config = write_config(tmp_path / "daemon.yaml", state_dir=str(tmp_path / "state"), procfs=str(host.procfs),
                          sysfs=str(host.sysfs), rootfs=str(host.rootfs), nvml_sim=str(no_gpu_sim(tmp_path)),
                          drift_check_s=0, api={"port": port, "max_body_bytes": 65536})
    d = DaemonProcess(config, tmp_path)
    root = host.procfs.parent
    state_dir = tmp_path / "state"

    def snapshot() -> dict[str, bytes]:
        state = {k: v for k, v in tree_state(state_dir).items() if not k.startswith("audit.log")}
        return {**tree_state(root), **{f"state/{k}": v for k, v in state.items()}}

    seen: set[tuple[str, bool]] = set()
    try:
        d.wait_ready()
        base = f"http://127.0.0.1:{port}"
        token = (state_dir / "api.token").read_text().strip()
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        for method, path in OPERATIONS:
            op = schema[path][method]
            strategy = st.one_of(op.as_strategy(generation_mode=GenerationMode.POSITIVE),
                                 op.as_strategy(generation_mode=GenerationMode.NEGATIVE))

            @settings(max_examples=3, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                             HealthCheck.data_too_large])
            @given(case=strategy, with_token=st.booleans())
            def one(case: Any, with_token: bool) -> None:
                headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
                if with_token:
                    headers["Authorization"] = f"Bearer {token}"
                before = None if with_token else snapshot()
                response = case.call(base_url=base, headers=headers, timeout=30)
                seen.add((_label(case), with_token))
                assert not server_error(case, response), (_label(case), response.status_code, response.text[:300])
                case.validate_response(response, checks=CONFORMANCE)
                if not with_token:
                    if case.path.startswith("/v1"):
                        assert response.status_code == 401, (_label(case), response.status_code)
                    assert snapshot() == before, _label(case)

            one()
    finally:
        assert d.stop() == 0, d.output()[-2000:]
    assert {label for label, _ in seen} == {f"{m} {p}" for m, p in OPERATIONS}
