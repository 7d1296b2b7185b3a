"""The scrape token (`api.metrics_token_file`): when set, /metrics answers only `Authorization: Bearer` with that
token (constant-time compare, the API token's checks on the file, never created by the daemon); the API token does
not open /metrics and the scrape token opens nothing under /v1. Unset, /metrics stays open."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent.api import create_app
from agent.api.auth import metrics_token
from agent.config import DaemonSettings, load_settings
from agent.daemon.services import Services
from agent.errors import InputError
from agent.hostfs import HostPaths
from tests.support.daemon_fixtures import settings_for

pytestmark = pytest.mark.usefixtures("no_daemon_env_overrides")

SCRAPE = "scrape-token-" + "s" * 24
ADMIN = "admin-token-" + "a" * 24


def write_token(path: Path, token: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    os.chmod(path, mode)
    return path


@pytest.fixture
def settings(host: HostPaths, tmp_path: Path) -> DaemonSettings:
    write_token(tmp_path / "state" / "api.token", ADMIN)
    scrape = write_token(tmp_path / "metrics.token", SCRAPE)
    return settings_for(host, tmp_path, api={"metrics_token_file": scrape})


@pytest.fixture
def client(settings: DaemonSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, Services(settings))) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_metrics_needs_the_scrape_token(client: TestClient) -> None:
    ok = client.get("/metrics", headers=bearer(SCRAPE))
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain")
    for headers in ({}, bearer(SCRAPE[:-1]), bearer(SCRAPE + "x"), {"Authorization": f"Basic {SCRAPE}"},
                    bearer(ADMIN)):
        r = client.get("/metrics", headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"


def test_the_scrape_token_opens_nothing_else(client: TestClient) -> None:
    assert client.get("/v1/status", headers=bearer(SCRAPE)).status_code == 401
    assert client.get("/v1/status", headers=bearer(ADMIN)).status_code == 200
    assert client.get("/healthz").status_code == 200  # liveness probes stay open


def test_without_the_setting_metrics_stays_open(host: HostPaths, tmp_path: Path) -> None:
    settings = settings_for(host, tmp_path)
    assert settings.api.metrics_token_file is None
    with TestClient(create_app(settings, Services(settings))) as c:
        assert c.get("/metrics").status_code == 200


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_scrape_token_readable_by_others_is_refused_at_start(settings: DaemonSettings, mode: int) -> None:
    assert settings.api.metrics_token_file is not None
    os.chmod(settings.api.metrics_token_file, mode)
    app = create_app(settings, Services(settings))
    with pytest.raises(InputError, match=r"metrics \(scrape\) token file is readable"), TestClient(app):
        pass


def test_a_missing_scrape_token_is_refused_not_created(tmp_path: Path) -> None:
    path = tmp_path / "none.token"
    with pytest.raises(InputError, match="cannot read the metrics"):
        metrics_token(path, ADMIN)
    assert not path.exists()
    short = write_token(tmp_path / "short.token", "abc")
    with pytest.raises(InputError, match="shorter"):
        metrics_token(short, ADMIN)
    link = tmp_path / "link.token"
    link.symlink_to(write_token(tmp_path / "real.token", SCRAPE))
    with pytest.raises(InputError, match="not a regular file"):
        metrics_token(link, ADMIN)
    assert metrics_token(None, ADMIN) is None


def test_the_config_resolves_a_relative_scrape_token_path(tmp_path: Path) -> None:
    config = tmp_path / "daemon.yaml"
    config.write_text("api:\n  metrics_token_file: secrets/metrics.token\n")
    assert load_settings(config).api.metrics_token_file == tmp_path / "secrets/metrics.token"


def test_a_scrape_token_equal_to_the_api_token_is_refused_at_start(settings: DaemonSettings) -> None:
    assert settings.api.metrics_token_file is not None
    write_token(settings.api.metrics_token_file, ADMIN)  # a Prometheus server's copy would retune the host
    with pytest.raises(InputError, match="holds the API token"), TestClient(create_app(settings, Services(settings))):
        pass


def test_the_daemon_refuses_the_api_token_as_scrape_token_before_touching_the_host(settings: DaemonSettings) -> None:
    from agent.daemon.runner import Daemon

    assert settings.api.metrics_token_file is not None
    write_token(settings.api.metrics_token_file, ADMIN)
    daemon = Daemon(settings)
    touched: list[str] = []
    daemon.services.tuning.rollback_interrupted = lambda: touched.append("rollback")  # type: ignore[method-assign]
    with pytest.raises(InputError, match="holds the API token"):
        daemon.start()
    assert touched == []


REMOTE = "api:\n  host: 0.0.0.0\n  allow_remote: true\n"


def test_a_remote_api_without_a_scrape_token_is_refused_at_config_load(tmp_path: Path) -> None:
    config = tmp_path / "daemon.yaml"
    config.write_text(REMOTE)
    with pytest.raises(InputError, match=r"needs api\.metrics_token_file") as e:
        load_settings(config)
    assert e.value.field == "api.metrics_token_file"
    config.write_text(REMOTE + "  metrics_token_file: metrics.token\n")
    assert load_settings(config).api.metrics_token_file == tmp_path / "metrics.token"
    # loopback, a unix socket, or allow_remote without a remote host: /metrics is not reachable from the network
    for ok in ("api:\n  host: ::1\n  allow_remote: true\n", "api:\n  allow_remote: true\n",
               REMOTE + "  unix_socket: api.sock\n"):
        config.write_text(ok)
        assert load_settings(config).api.metrics_token_file is None
