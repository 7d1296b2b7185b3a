"""Every /v1 route needs the bearer token — enumerated from the app itself, so a route added later is covered —
while /healthz, /metrics and /openapi.json do not; the token file's permissions are enforced."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent.api import create_app
from agent.api.app import route_table
from agent.api.auth import ensure_token
from agent.config import DaemonSettings
from agent.daemon.services import Services
from agent.errors import InputError
from agent.hostfs import HostPaths
from tests.support.daemon_fixtures import settings_for

# The routes the issue names; the enumeration below must find at least these (and finds new ones by itself).
ISSUE_ROUTES = {
    ("GET", "/v1/host"), ("GET", "/v1/policies"), ("GET", "/v1/policies/{name}"), ("POST", "/v1/plan"),
    ("POST", "/v1/apply"), ("POST", "/v1/revert"), ("GET", "/v1/status"), ("GET", "/v1/changes"),
    ("GET", "/v1/verify"), ("GET", "/v1/telemetry"), ("GET", "/v1/controller"), ("GET", "/v1/worker"),
    ("POST", "/v1/worker/restart"),
}


pytestmark = pytest.mark.usefixtures("no_daemon_env_overrides")


@pytest.fixture
def settings(host: HostPaths, tmp_path: Path) -> DaemonSettings:
    return settings_for(host, tmp_path)


@pytest.fixture
def client(settings: DaemonSettings) -> Iterator[TestClient]:
    app = create_app(settings, Services(settings))
    with TestClient(app) as c:
        yield c


def v1_routes(client: TestClient) -> list[tuple[str, str]]:
    return [(m, p) for m, p in route_table(client.app) if p.startswith("/v1")]  # type: ignore[arg-type]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "base", path)


def test_enumeration_finds_every_route_of_the_issue(client: TestClient) -> None:
    found = set(v1_routes(client))
    assert found >= ISSUE_ROUTES, ISSUE_ROUTES - found


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-token-wrong-token-wrong"},
    {"Authorization": "Bearer "},
    {"Authorization": "Basic dXNlcjpwYXNz"},
], ids=["none", "wrong", "empty", "basic"])
def test_every_v1_route_refuses_without_the_right_token(client: TestClient, headers: dict[str, str]) -> None:
    routes = v1_routes(client)
    assert routes
    for method, path in routes:
        r = client.request(method, concrete(path), headers=headers, json={"name": "base"})
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.json()["error"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"


def test_a_token_of_another_length_or_a_prefix_is_refused(client: TestClient, settings: DaemonSettings) -> None:
    token = settings.token_path.read_text().strip()
    for wrong in (token[:-1], token + "x", token.upper() if token.upper() != token else token.lower()):
        r = client.get("/v1/status", headers={"Authorization": f"Bearer {wrong}"})
        assert r.status_code == 401


def test_the_right_token_opens_every_get_route(client: TestClient, settings: DaemonSettings) -> None:
    token = settings.token_path.read_text().strip()
    for method, path in v1_routes(client):
        if method != "GET":
            continue
        r = client.get(concrete(path), headers={"Authorization": f"Bearer {token}"})
        # Authorised: whatever the route says (503 for a part not running here), never 401/403.
        assert r.status_code not in (401, 403), (path, r.text)


def test_probes_and_openapi_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    spec = client.get("/openapi.json").json()
    assert {p for p in spec["paths"] if p.startswith("/v1")} == {p for _, p in v1_routes(client)}
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 404  # no CDN-loading docs page on a root daemon


def test_token_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "api.token"
    token = ensure_token(path)
    assert len(token) >= 32
    assert (path.stat().st_mode & 0o777) == 0o600
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert ensure_token(path) == token


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_token_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "api.token"
    path.write_text("s" * 40)
    os.chmod(path, mode)
    with pytest.raises(InputError, match="group/others") as e:
        ensure_token(path)
    assert e.value.path == str(path)


def test_token_symlink_and_short_token_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("s" * 40)
    os.chmod(real, 0o600)
    link = tmp_path / "api.token"
    link.symlink_to(real)
    with pytest.raises(InputError, match="not a regular file"):
        ensure_token(link)
    short = tmp_path / "short.token"
    short.write_text("abc\n")
    os.chmod(short, 0o600)
    with pytest.raises(InputError, match="shorter"):
        ensure_token(short)


def test_app_refuses_to_start_with_a_readable_token(settings: DaemonSettings) -> None:
    settings.token_path.parent.mkdir(parents=True, exist_ok=True)
    settings.token_path.write_text("t" * 40)
    os.chmod(settings.token_path, 0o644)
    app = create_app(settings, Services(settings))
    with pytest.raises(InputError, match="refusing to start"), TestClient(app):
        pass
