"""The same controller drives hosttune's PyTorch worker through its live levers: a max-batch step applied over
POST /control without a restart, measured on live traffic and kept or rolled back; an out-of-memory the worker
handles itself (it halves its batch) is followed, logged as a fallback, and no request fails."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.bench.corpus import MixSpec
from agent.bench.rig import ClosedLoopLoad, free_port, serve_gateway
from agent.control.actuators import GateActuator, LiveActuator
from agent.control.config import Axis, config_for
from agent.control.controller import Controller, decisions_path
from agent.control.decisions import DecisionLog
from agent.control.feed import GatewayFeed
from agent.gateway.upstream import ProbedUpstream
from agent.model_files import default_model_path
from agent.policy.model import SloSpec
from tests.support import tiers

pytestmark = [pytest.mark.engine, pytest.mark.slow]


class TorchWorker:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, token_file: Path) -> None:
        self.proc, self.url, self.token_file = proc, url, token_file


@pytest.fixture
def torch_worker(tmp_path: Path) -> Iterator[TorchWorker]:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        if tiers.on_ci():
            pytest.fail(f"the torch extra must be installed on CI: {e}", pytrace=False)
        pytest.skip(f"torch extra not installed ({e}); run `make setup`")
    token_file = tmp_path / "control.token"
    token_file.write_text(secrets.token_hex(16))
    token_file.chmod(0o600)
    port = free_port()
    log = open(tmp_path / "torch.log", "wb")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen([sys.executable, "-m", "agent.worker.torch_server", "--model", str(default_model_path()),
                             "--port", str(port), "--max-batch", "1", "--dtype", "fp32", "--threads", "2",
                             "--control-token-file", str(token_file), "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "torch.log").read_text()[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2, trust_env=False).status_code == 200:
                    break
            assert time.monotonic() < deadline, "torch worker not ready in 300 s"
            time.sleep(0.5)
        yield TorchWorker(proc, url, token_file)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()


def test_controller_steps_and_follows_the_torch_workers_live_levers(torch_worker: TorchWorker,
                                                                      tmp_path: Path) -> None:
    from agent.worker.torch_control import TorchWorkerControl

    control = TorchWorkerControl(torch_worker.url, token_file=torch_worker.token_file, timeout_s=30)
    cfg = config_for("torch", SloSpec(ttft_p95_ms=60_000), ladder=[Axis(knob="max_batch", values=[1, 4])],
                     measure_s=15, max_measure_s=45, settle_s=1, min_requests=4, cooldown_s=600, fast_enabled=False,
                     interval_s=1)
    endpoint = ProbedUpstream(torch_worker.url, healthy_every_s=1.0)
    with serve_gateway(endpoint, limit=8, max_queue=256, queue_timeout_s=300) as (gw, url):
        deadline = time.monotonic() + 30
        while not endpoint.is_ready():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        act = LiveActuator(control)
        ctl = Controller(cfg, GatewayFeed(gw.stats, watch_gpu=False), GateActuator(gw.gate), act,
                         DecisionLog(decisions_path(tmp_path)))
        assert ctl.core.knobs == {"max_batch": 1, "kv_budget_tokens": None}
        with ClosedLoopLoad(url, 8, MixSpec({"chat": 1.0}, max_tokens=8), timeout_s=300) as load:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                time.sleep(1)
                ctl.tick()
                if any(d.lever == "knobs" and d.outcome != "trial" for d in ctl.decisions()):
                    break
            steps = [d for d in ctl.decisions() if d.lever == "knobs"]
            assert steps, ctl.status()["slow_lever"]
            step = steps[0]
            assert step.after["max_batch"] == 4 and step.outcome in ("kept", "rolled_back"), step
            assert step.measured_before is not None and step.measured_after is not None
            gain = (step.measured_after["tokens_per_s"] / step.measured_before["tokens_per_s"] - 1) * 100
            assert (step.outcome == "kept") == (gain >= cfg.dead_band_pct)
            # applied live: the same process, ready throughout the after-window
            assert step.measured_after["ready_ratio"] == 1.0 and torch_worker.proc.poll() is None
            assert control.state().max_batch == (4 if step.outcome == "kept" else 1)
            # the worker runs out of memory (its test switch) and halves its own batch; the controller follows
            control.set_max_batch(4)
            for _ in range(2):
                ctl.tick()
                time.sleep(0.5)
            control.inject_oom(1)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(d.action == "fallback" for d in ctl.decisions()):
                time.sleep(1)
                ctl.tick()
        results = load.results
    fall = next(d for d in ctl.decisions() if d.action == "fallback")
    st = control.state()
    assert st.oom_total >= 1 and fall.after["max_batch"] == st.max_batch < 4
    assert "the worker changed" in fall.reason and fall.outcome == "fallback"
    assert ctl.core.knobs["max_batch"] == st.max_batch
    assert results and all(r.ok for r in results), {r.error for r in results if not r.ok}
    control.close()
