"""Run `hosttune worker run` as a real subprocess for e2e tests, watch its state file, and clean up every process
it started (the hosttune process and the worker, by PID)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 60) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


class WorkerRun:
    """One `hosttune worker run POLICY` process with its own state dir."""

    def __init__(self, tmp: Path, worker: dict[str, Any], *extra_args: str) -> None:
        self.tmp = tmp
        self.state_dir = tmp / "state"
        self.policy = tmp / "worker.yaml"
        self.policy.write_text(yaml.safe_dump({"name": "e2e-worker", "worker": worker}))
        self.out = open(tmp / "hosttune.out", "w+")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, HOSTTUNE_STATE_DIR=str(self.state_dir), PYTHONUNBUFFERED="1")
        if worker.get("engine", "llamacpp") != "llamacpp" and "--user" not in extra_args:
            # Fake servers live in pytest's 0700 tmp dir and run on this venv's interpreter, which may sit under
            # /root: only root can run them. The real llama-server runs as the unprivileged worker user here, and
            # tests/kernel/test_worker_privdrop_real.py checks the drop itself.
            extra_args = (*extra_args, "--user", "root")
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "worker", "run", str(self.policy), *extra_args],
                                     cwd=REPO, env=env, stdout=self.out, stderr=subprocess.STDOUT)
        self.worker_pids: set[int] = set()

    @property
    def state_file(self) -> Path:
        return self.state_dir / "worker" / "state.json"

    def state(self) -> dict[str, Any]:
        try:
            st = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        if st.get("pid"):
            self.worker_pids.add(st["pid"])
        return st

    def events(self) -> list[dict[str, Any]]:
        path = self.state_dir / "worker" / "events.jsonl"
        return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []

    def output(self) -> str:
        self.out.flush()
        return (self.tmp / "hosttune.out").read_text()

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.state()
            if st and pred(st):
                return st
            if self.proc.poll() is not None and not (st and pred(st)):
                st = self.state()
                if st and pred(st):
                    return st
                raise AssertionError(f"hosttune exited ({self.proc.returncode}) before {what}:\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; state {self.state()}\n{self.output()}")

    def stop(self) -> int | None:
        """SIGTERM hosttune (it stops the worker), then make sure nothing we started survives."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.state()
        for pid in self.worker_pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.out.close()
        return self.proc.returncode
