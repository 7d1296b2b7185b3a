"""Shared pieces of the daemon/API tests: settings and services over a fixture host tree, and an app client."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from fastapi.testclient import TestClient

from agent.api import create_app
from agent.config import DaemonSettings
from agent.daemon.mainloop import MainLoop
from agent.daemon.services import Services
from agent.hostfs import HostPaths

HOSTTUNE = Path(sys.executable).parent / "hosttune"

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
    services.tuning.run_mutation = loop.call
    app = create_app(settings, services)
    try:
        with TestClient(app) as c:
            c.headers["Authorization"] = "Bearer " + settings.token_path.read_text().strip()
            yield MainThreadClient(c, loop)
    finally:
        loop.close()


class NotifyListener:
    """A stand-in for systemd's notify socket: a unix datagram socket that records every sd_notify message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.on_message: Callable[[dict[str, str]], None] | None = None

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            if self.on_message is not None:
                self.on_message(fields)
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, value: str | None = None, timeout_s: float = 30.0, after: int = 0) -> int:
        """Index of the first message (from `after` on) holding key (=value); raise on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i, (_, fields) in enumerate(self.messages[after:], start=after):
                if key in fields and (value is None or fields[key] == value):
                    return i
            time.sleep(0.02)
        raise AssertionError(f"no {key}={value} within {timeout_s} s; got {[m for _, m in self.messages]}")

    def statuses(self) -> list[str]:
        return [f["STATUS"] for _, f in self.messages if "STATUS" in f]

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self._thread.join(2)


class DaemonProcess:
    """`hosttune daemon --config FILE` as a real process (uvicorn on loopback), with a notify listener."""

    def __init__(self, config: Path, tmp_path: Path, env: dict[str, str] | None = None,
                 watchdog_usec: int | None = None) -> None:
        self.notify = NotifyListener(tmp_path / "notify.sock")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("HOSTTUNE_", "NOTIFY_", "WATCHDOG_"))}
        self.env["NOTIFY_SOCKET"] = str(self.notify.path)
        if watchdog_usec is not None:
            self.env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.env.update(env or {})
        self.log = tmp_path / "daemon.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([str(HOSTTUNE), "daemon", "--config", str(config)], stdout=out,
                                         stderr=subprocess.STDOUT, env=self.env, stdin=subprocess.DEVNULL)
        if watchdog_usec is not None:
            self.env["WATCHDOG_PID"] = str(self.proc.pid)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 60.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.output()}")
            try:
                return self.notify.wait_for("READY", "1", timeout_s=0.2)
            except AssertionError:
                continue
        raise AssertionError(f"daemon not ready in {timeout_s} s:\n{self.output()}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # our own child, by PID
                self.proc.wait(10)
        self.notify.close()
        return self.proc.returncode


def write_config(path: Path, **values: Any) -> Path:
    path.write_text(yaml.safe_dump(json.loads(json.dumps(values, default=str)), sort_keys=False))
    return path
