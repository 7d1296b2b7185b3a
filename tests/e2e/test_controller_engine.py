"""The controller with the real engine: llama-server (bundled SmolLM2-135M) under the real Supervisor, the real
gateway in front, real closed-loop clients. An induced overload makes the controller lower the admission limit; a
slow step that makes things worse (one slot under eight concurrent clients) is measured, rolled back, and the
worker serves with its previous knobs again without losing a request."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.bench.corpus import MixSpec
from agent.bench.rig import ClosedLoopLoad, gateway_for, supervised_llama
from agent.control.actuators import GateActuator, RestartActuator
from agent.control.config import Axis, ControllerConfig
from agent.control.controller import Controller, decisions_path
from agent.control.decisions import DecisionLog, read_decisions
from agent.control.drain import Drain
from agent.control.feed import GatewayFeed
from agent.control.observe import measure
from agent.worker.supervisor import Supervisor

pytestmark = [pytest.mark.engine, pytest.mark.slow]


@pytest.fixture
def llama(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Supervisor]:
    sup = supervised_llama(request.param, state_dir=tmp_path / "state")
    sup.start()
    try:
        assert sup.wait_ready(180), sup.status().reason
        yield sup
    finally:
        sup.stop()


def slots(sup: Supervisor) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{sup.base_url}/slots", timeout=10) as r:
        return len(json.loads(r.read()))


def tick_until(ctl: Controller, done: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1.0)
        ctl.tick()
        if callable(done) and done():
            return True
    return False


@pytest.mark.parametrize("llama", [{"parallel": 2, "ctx": 2048}], indirect=True)
def test_overload_makes_the_controller_lower_the_admission_limit(llama: Supervisor, tmp_path: Path) -> None:
    slo_ms = 1500.0
    with gateway_for(llama, limit=12, max_queue=256, queue_timeout_s=120) as (gw, url):
        cfg = ControllerConfig(ttft_p95_ms=slo_ms, fast_window_s=15, min_samples=4, decrease_hold_s=3,
                               increase_interval_s=3, slow_enabled=False)
        feed = GatewayFeed(gw.stats, watch_gpu=False)
        ctl = Controller(cfg, feed, GateActuator(gw.gate), None, DecisionLog(decisions_path(tmp_path)))
        # 14 clients, 12 admitted, two engine slots: requests wait inside llama-server for a slot
        with ClosedLoopLoad(url, 14, MixSpec({"chat": 1.0}, max_tokens=64)) as load:
            lowered = tick_until(ctl, lambda: gw.gate.limit <= 4, 90)
            ticks = list(ctl.core.ticks)
            waiting = gw.gate.queued
        results = load.results
    decisions = read_decisions(decisions_path(tmp_path))
    assert lowered, f"limit still {gw.gate.limit}; decisions: {[(d.action, d.reason) for d in decisions]}"
    assert decisions and decisions[0].action == "decrease" and decisions[0].before == {"limit": 12}
    first = decisions[0].measured_before
    assert first is not None and first["service_ttft_p95_ms"] > slo_ms
    assert all(d.action == "decrease" for d in decisions if d.after["limit"] <= 4)
    # the waiting moved from inside the engine to the gateway queue, where it is measured and bounded
    assert waiting > 0
    last = decisions[-1]
    after = measure(ticks, last.t, ticks[-1].t, admitted_after=last.t)
    if after.ok >= 3 and after.service_ttft_p95_s is not None:
        assert after.service_ttft_p95_s * 1000 < first["service_ttft_p95_ms"]
    assert results and all(r.ok for r in results), {r.error for r in results if not r.ok}


@pytest.mark.parametrize("llama", [{"parallel": 4, "ctx": 2048}], indirect=True)
def test_a_slow_step_that_makes_things_worse_is_rolled_back(llama: Supervisor, tmp_path: Path) -> None:
    drain = Drain()
    with gateway_for(llama, drain=drain, limit=4, max_queue=256, queue_timeout_s=120) as (gw, url):
        # The only step the ladder allows from 4 slots is down to 1: a bad candidate under 8 concurrent clients.
        cfg = ControllerConfig(ttft_p95_ms=60_000, ladder=[Axis(knob="parallel", values=[1, 4])], measure_s=12,
                               max_measure_s=30, settle_s=2, min_requests=6, min_saturation=0.5, cooldown_s=300,
                               fast_enabled=False, ready_timeout_s=120)
        act = RestartActuator(llama, drain=drain)
        ctl = Controller(cfg, GatewayFeed(gw.stats, watch_gpu=False), GateActuator(gw.gate), act,
                         DecisionLog(decisions_path(tmp_path)))
        with ClosedLoopLoad(url, 8, MixSpec({"chat": 1.0}, max_tokens=32)) as load:
            settled = tick_until(ctl, lambda: any(d.lever == "knobs" and d.outcome != "trial"
                                                  for d in ctl.decisions()), 110)
            back = tick_until(ctl, lambda: ctl.core.phase == "baseline", 60)
        results = load.results
    steps = [d for d in read_decisions(decisions_path(tmp_path)) if d.lever == "knobs"]
    assert settled and back, ([(d.outcome, d.outcome_reason) for d in steps], ctl.status()["slow_lever"])
    assert len(steps) == 1
    step = steps[0]
    assert step.before["parallel"] == 4 and step.after["parallel"] == 1
    assert step.outcome == "rolled_back", step.outcome_reason
    assert step.measured_before is not None and step.measured_after is not None
    assert step.measured_after["tokens_per_s"] < step.measured_before["tokens_per_s"] * 1.03
    # the engine really runs the previous knobs again, after two restarts (the step and its rollback)
    assert llama.spec.parallel == 4 and slots(llama) == 4
    assert llama.status().restarts >= 2
    # drained before each restart, the gateway holding new requests meanwhile: none failed, none was cut
    assert act.last_drain_s is not None and not drain.active
    assert results and all(r.ok for r in results), {r.error for r in results if not r.ok}


def test_llama_server_defaults_are_what_the_ladder_assumes(tmp_path: Path) -> None:
    """A knob left unset counts as llama-server's default when the slow lever steps from it (-np auto = 4 slots);
    if a llama.cpp update changes that, this fails instead of the controller stepping from a wrong value."""
    from agent.control.config import LLAMACPP_DEFAULTS

    sup = supervised_llama({}, state_dir=tmp_path / "state")
    sup.start()
    try:
        assert sup.wait_ready(180), sup.status().reason
        assert slots(sup) == LLAMACPP_DEFAULTS["parallel"]
    finally:
        sup.stop()
