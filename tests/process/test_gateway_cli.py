"""`hosttune gateway` as a user runs it: a real subprocess in front of a real local worker, stopped by SIGTERM;
bad arguments are refused with exit 2 and a one-line error naming the flag."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from agent.bench.llama_local import free_port
from agent.metrics.prom import parse_text, sample_value
from tests.support.gateway_fakes import FakeWorker

HOSTTUNE = [sys.executable, "-m", "agent"]


@pytest.fixture
def worker() -> Iterator[FakeWorker]:
    w = FakeWorker().start()
    yield w
    w.close()


@pytest.mark.parametrize(("args", "flag"), [
    (["--upstream", "localhost:8080"], "--upstream"),
    (["--upstream", "http://127.0.0.1:1/v1"], "--upstream"),
    (["--upstream", "http://127.0.0.1:1", "--limit", "0"], "--limit"),
    (["--upstream", "http://127.0.0.1:1", "--queue-timeout", "-1"], "--queue-timeout"),
    (["--upstream", "http://127.0.0.1:1", "--host", "0.0.0.0"], "--host"),
])
def test_bad_arguments_exit_2_naming_the_flag(args: list[str], flag: str) -> None:
    r = subprocess.run([*HOSTTUNE, "gateway", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith(f"hosttune: error: {flag}: ") and r.stderr.count("\n") == 1


def test_gateway_command_serves_and_stops_on_sigterm(worker: FakeWorker) -> None:
    port = free_port()
    proc = subprocess.Popen([*HOSTTUNE, "gateway", "--upstream", worker.url, "--port", str(port), "--limit", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "gateway did not become ready"
            time.sleep(0.1)
        r = httpx.post(url + "/v1/completions", json={"prompt": "x", "stream": True, "fake": {"tokens": 3}},
                       timeout=10)
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        time.sleep(1.2)  # let the 1 Hz telemetry job sample the worker
        fams = parse_text(httpx.get(url + "/metrics", timeout=5).text)
        assert sample_value(fams, "hosttune_gateway_requests_total", {"outcome": "ok"}) == 1
        assert sample_value(fams, "hosttune_gateway_admission_limit") == 2
        assert sample_value(fams, "hosttune_worker_up") == 1
        assert sample_value(fams, "hosttune_host_memory_headroom_ratio") is not None
        assert "node_memory_MemTotal_bytes" not in fams  # node_exporter's job, unless the daemon config asks
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
            raise
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says what stopped it
    assert rc in (0, -signal.SIGTERM)
    err = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in err
