"""`hosttune worker run|status` as real processes with the `command` engine (a small real HTTP server): status
while running, clean stop on SIGINT, no orphan when hosttune itself is killed -9, and bad placement input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.bench.llama_local import free_port
from agent.fsio import parse_cpu_list
from tests.e2e.worker_run import REPO, WorkerRun, alive
from tests.support.worker_fakes import write_fake_server

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process semantics")


def fake_worker(tmp: Path, **extra: object) -> dict[str, object]:
    port = free_port()
    return {"engine": "command", "port": port,
            "argv": [*write_fake_server(tmp), "--port", str(port), "--load-seconds", "0.3"], **extra}


def status(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "worker", "status", "--state-dir", str(state_dir), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_status_while_running_and_clean_stop_on_sigint(tmp_path: Path) -> None:
    run = WorkerRun(tmp_path, fake_worker(tmp_path))
    try:
        st = run.wait(lambda s: s.get("state") == "ready", 60, "ready")
        out = status(run.state_dir, "--json")
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["state"] == "ready" and data["pid"] == st["pid"] and data["stale"] is False
        node = data["placement"]["node"]
        assert node is not None and data["placement"]["cpus"] == parse_cpu_list(
            Path(f"/sys/devices/system/node/node{node}/cpulist").read_text())
        text = status(run.state_dir).stdout
        assert "state:     ready" in text and f"pid {st['pid']}" in text and "1 starts" in text
        run.proc.send_signal(signal.SIGINT)
        assert run.proc.wait(30) == 0
        assert not alive(st["pid"])
        assert run.state()["state"] == "stopped"
        assert "stopped on SIGINT" in run.output()
    finally:
        run.stop()


def test_killing_hosttune_does_not_orphan_the_worker(tmp_path: Path) -> None:
    run = WorkerRun(tmp_path, fake_worker(tmp_path))
    try:
        st = run.wait(lambda s: s.get("state") == "ready", 60, "ready")
        worker = st["pid"]
        os.kill(run.proc.pid, signal.SIGKILL)  # hosttune, which this test started
        run.proc.wait(10)
        deadline = time.monotonic() + 10
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(worker), "the worker outlived its supervisor"
        out = status(run.state_dir)
        assert "STALE" in out.stdout  # the state file still says ready, but its supervisor is gone
    finally:
        run.stop()


def test_bad_cpus_rejected_with_file_line_and_nothing_started(tmp_path: Path) -> None:
    run = WorkerRun(tmp_path, fake_worker(tmp_path, placement={"mode": "explicit", "cpus": [4000]}))
    try:
        assert run.proc.wait(60) == 2
        err = run.output()
        assert "hosttune: error: " in err and "worker.placement.cpus" in err and "4000" in err
        assert f"{run.policy}:" in err  # file:line of the offending setting
        assert not run.state_file.exists()
    finally:
        run.stop()


def test_status_without_any_run(tmp_path: Path) -> None:
    out = status(tmp_path / "empty")
    assert out.returncode == 0 and "no worker has run" in out.stdout
