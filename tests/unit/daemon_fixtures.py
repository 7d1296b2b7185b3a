"""Shared pieces of the daemon/API tests: settings and services over a fixture host tree, and an app client."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from agent.api import create_app
from agent.config import DaemonSettings
from agent.daemon.mainloop import MainLoop
from agent.daemon.services import Services
from agent.hostfs import HostPaths

# A policy that touches three tuners of the fixture "server" tree (conftest.build_server): its values differ from
# the tree's (swappiness 60, THP madvise, 8 x 2M pages), so applying it writes exactly three files.
ROUND_TRIP_POLICY = """\
name: api-round-trip
sysctl:
  vm.swappiness: 7
thp:
  enabled: never
hugepages:
  - {size: 2M, count: 16}
"""


def no_gpu_sim(tmp_path: Path) -> Path:
    """An NVML simulation with no library: fixture hosts must never read a real GPU this machine may have."""
    sim = tmp_path / "nvml-missing.json"
    sim.write_text('{"library": "missing"}\n')
    return sim


def settings_for(host: HostPaths, tmp_path: Path, **overrides: object) -> DaemonSettings:
    values: dict[str, object] = {
        "state_dir": tmp_path / "state", "procfs": host.procfs, "sysfs": host.sysfs, "rootfs": host.rootfs,
        "nvml_sim": no_gpu_sim(tmp_path), "drift_check_s": 0,
    }
    values.update(overrides)
    return DaemonSettings.model_validate(values)


def services_for(host: HostPaths, tmp_path: Path, **overrides: object) -> Services:
    return Services(settings_for(host, tmp_path, **overrides))


class MainThreadClient:
    """A TestClient whose requests are made from a side thread while the test's main thread runs the daemon's
    MainLoop — the way `hosttune daemon` runs host mutations (the engine needs the main thread for its SIGTERM
    rollback handler)."""

    def __init__(self, client: TestClient, loop: MainLoop) -> None:
        self.client = client
        self.loop = loop
        self.headers = client.headers

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["response"] = self.client.request(method, url, **kwargs)
            except BaseException as e:
                box["error"] = e

        thread = threading.Thread(target=call)
        thread.start()
        while thread.is_alive():
            self.loop.run_once(0.02)
        thread.join()
        if "error" in box:
            raise box["error"]
        response: httpx.Response = box["response"]
        return response

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


@contextlib.contextmanager
def main_thread_client(settings: DaemonSettings) -> Iterator[MainThreadClient]:
    services = Services(settings)
    loop = MainLoop()
    services.run_mutation = loop.call
    app = create_app(settings, services)
    try:
        with TestClient(app) as c:
            c.headers["Authorization"] = "Bearer " + settings.token_path.read_text().strip()
            yield MainThreadClient(c, loop)
    finally:
        loop.close()
