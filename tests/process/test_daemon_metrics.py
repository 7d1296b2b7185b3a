"""The real `hosttune daemon` process's /metrics: build, policy and worker info, the policy's SLO, the last apply,
worker restarts counted, and no node_exporter names unless the config asks for them."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from agent import __version__
from agent.bench.llama_local import free_port
from agent.hostfs import HostPaths
from agent.metrics.prom import MetricFamily, parse_text, sample_value
from tests.process.test_daemon_process import _http_worker_policy, _live_roots, base_config, token
from tests.support.daemon_fixtures import DaemonProcess, write_config

pytestmark = pytest.mark.slow


def scrape(base: str) -> dict[str, MetricFamily]:
    r = httpx.get(f"{base}/metrics", timeout=10)
    assert r.status_code == 200
    return parse_text(r.text)


def test_a_real_daemon_exports_its_state(host: HostPaths, tmp_path: Path) -> None:
    policy = _http_worker_policy(tmp_path, free_port(), "slo:\n  ttft_p95_ms: 800\n")
    cfg = _live_roots(base_config(host, tmp_path, policy=str(policy), gateway={"port": free_port()}))
    base = f"http://127.0.0.1:{cfg['api']['port']}"
    d = DaemonProcess(write_config(tmp_path / "daemon.yaml", **cfg), tmp_path)
    try:
        d.wait_ready()
        fams = scrape(base)
        digest = hashlib.sha256(policy.read_bytes()).hexdigest()[:12]
        assert sample_value(fams, "hosttune_build_info", {"version": __version__}) == 1
        assert sample_value(fams, "hosttune_policy_info", {"policy": "with-worker", "digest": digest}) == 1
        assert sample_value(fams, "hosttune_policy_slo_seconds", {"slo": "ttft_p95"}) == pytest.approx(0.8)
        assert sample_value(fams, "hosttune_last_apply_success") == 1
        assert sample_value(fams, "hosttune_worker_info", {"engine": "command", "model": "default"}) == 1
        assert sample_value(fams, "hosttune_worker_restarts_total") == 0
        assert not [n for n in fams if n.startswith("node_")]
        r = httpx.post(f"{base}/v1/worker/restart", headers={"Authorization": f"Bearer {token(tmp_path)}"},
                       timeout=30)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 15
        while sample_value(fams := scrape(base), "hosttune_worker_restarts_total") != 1:
            assert time.monotonic() < deadline, fams.get("hosttune_worker_restarts_total")
            time.sleep(0.2)
        assert sample_value(fams, "hosttune_worker_crashes_total") == 0   # an API restart is not a crash
        auth = {"Authorization": f"Bearer {token(tmp_path)}"}
        while (pid := httpx.get(f"{base}/v1/worker", headers=auth, timeout=30).json().get("pid")) is None:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)   # the worker this test's daemon started
        deadline = time.monotonic() + 15
        while sample_value(fams := scrape(base), "hosttune_worker_crashes_total") != 1:
            assert time.monotonic() < deadline, fams.get("hosttune_worker_crashes_total")
            time.sleep(0.2)
    finally:
        assert d.stop() == 0, d.output()
