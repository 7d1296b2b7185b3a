"""The controller assembled from real parts without an engine: the gateway's own GatewayStats and AdmissionGate,
the decision log on disk, the worker Supervisor running a small real HTTP worker process (tests/support/worker_fakes.py)
for the restart actuator, and the torch control contract for the live actuator."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.bench.llama_local import free_port
from agent.control.actuators import GateActuator, LiveActuator, RestartActuator, is_oom
from agent.control.config import Axis, ControllerConfig, config_for
from agent.control.controller import Controller, decisions_path
from agent.control.core import SetKnobs, SetLimit, WorkerEvent
from agent.control.decisions import Decision, DecisionLog, read_decisions
from agent.control.drain import Drain
from agent.control.feed import GatewayFeed
from agent.control.ladder import candidates, step_down
from agent.daemon.metrics_state import controller_knobs, decisions_taken, worker_info
from agent.errors import InputError
from agent.gateway.admission import AdmissionGate
from agent.gateway.stats import GatewayStats, RequestRecord
from agent.gateway.upstream import SupervisedWorker
from agent.metrics.prom import format_families, parse_text, sample_value
from agent.policy.model import SloSpec, WorkerSpec
from agent.telemetry.daemon_state import DaemonState, daemon_families
from agent.worker.engines import CommandEngine
from agent.worker.launch import Launch
from agent.worker.supervisor import RestartPolicy, Supervisor, WorkerState
from tests.support.worker_fakes import write_fake_server


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def finish(stats: GatewayStats, clock: Clock, ttft: float, wait: float = 0.0, tokens: int = 32) -> None:
    rec = RequestRecord(route="/v1/chat/completions", stream=True, started=clock.t - 1.0, queue_wait_s=wait,
                        ttft_s=ttft, itl_s=[0.02] * 4, e2e_s=1.0, tokens_in=10, tokens_out=tokens, outcome="ok")
    stats.finish(rec)


def gateway_parts(limit: int, clock: Clock) -> tuple[GatewayStats, AdmissionGate]:
    gate = AdmissionGate(limit, max_queue=100)
    stats = GatewayStats(window_s=60, clock=clock)
    stats.gauges = lambda: (gate.in_flight, 3, gate.limit)  # three waiting: demand above the limit
    stats.worker_ready = lambda: True
    return stats, gate


# ----- feed ---------------------------------------------------------------------------------------------------------

def test_feed_sees_each_finished_request_once_and_counts_what_it_missed() -> None:
    clock = Clock()
    stats, _gate = gateway_parts(4, clock)
    finish(stats, clock, 0.1)                       # before the controller: not its business
    feed = GatewayFeed(stats, clock=clock, watch_gpu=False)
    assert feed.read().finished == ()
    for ttft in (0.2, 0.3):
        finish(stats, clock, ttft)
    t = feed.read()
    assert [f.ttft_s for f in t.finished] == [0.2, 0.3] and t.missed == 0
    assert t.limit == 4 and t.queued == 3 and t.mem_headroom_pct is not None and 0 < t.mem_headroom_pct <= 100
    assert feed.read().finished == ()
    keep = stats.recent.maxlen or 0
    for _ in range(keep + 5):      # more than the gateway keeps between two reads
        finish(stats, clock, 0.4)
    t = feed.read()
    assert len(t.finished) == keep and t.missed == 5
    f = t.finished[0]
    assert f.at == pytest.approx(clock.t) and f.service_ttft_s == pytest.approx(0.4)


# ----- controller with the real gateway gate ------------------------------------------------------------------------

def run_ticks(ctl: Controller, stats: GatewayStats, clock: Clock, seconds: int, ttft: float, wait: float = 0.0,
              per_s: int = 3) -> None:
    for _ in range(seconds):
        clock.t += 1.0
        for _ in range(per_s):
            finish(stats, clock, ttft + wait, wait)
        ctl.tick()


def test_overload_lowers_the_gateway_limit_and_logs_it(tmp_path: Path) -> None:
    clock = Clock()
    stats, gate = gateway_parts(8, clock)
    log = DecisionLog(decisions_path(tmp_path))
    cfg = ControllerConfig(ttft_p95_ms=500, fast_window_s=5, decrease_hold_s=2, slow_enabled=False)
    ctl = Controller(cfg, GatewayFeed(stats, clock=clock, watch_gpu=False), GateActuator(gate), None, log,
                     clock=clock)
    run_ticks(ctl, stats, clock, 20, ttft=2.0)
    assert gate.limit < 8
    ds = ctl.decisions()
    assert ds and all(d.action == "decrease" and d.lever == "admission" for d in ds)
    assert [d.after["limit"] for d in ds][-1] == gate.limit
    on_disk = read_decisions(decisions_path(tmp_path))
    assert [d.model_dump() for d in on_disk] == [d.model_dump() for d in ds]
    assert all(d.at is not None for d in on_disk)
    # the service TTFT is what counts: the same TTFT made of admission wait does not lower the limit
    clock2 = Clock()
    stats2, gate2 = gateway_parts(8, clock2)
    ctl2 = Controller(cfg, GatewayFeed(stats2, clock=clock2, watch_gpu=False), GateActuator(gate2), None,
                      clock=clock2)
    run_ticks(ctl2, stats2, clock2, 20, ttft=0.1, wait=1.9)
    assert gate2.limit >= 8


def test_without_a_knob_actuator_the_engine_capacity_is_not_assumed() -> None:
    """A command worker's slots are unknown: the fast lever cuts multiplicatively (12 -> 9), not to llama-server's
    default of 4 slots as it would for a llama-server whose knobs it knows."""
    clock = Clock()
    stats, gate = gateway_parts(12, clock)
    cfg = ControllerConfig(ttft_p95_ms=500, fast_window_s=5, decrease_hold_s=2)
    ctl = Controller(cfg, GatewayFeed(stats, clock=clock, watch_gpu=False), GateActuator(gate), None, clock=clock)
    assert ctl.cfg.concurrency_knob is None and not ctl.cfg.slow_enabled
    run_ticks(ctl, stats, clock, 8, ttft=2.0)
    first = ctl.decisions()[0]
    assert (first.action, first.before, first.after) == ("decrease", {"limit": 12}, {"limit": 9})


def test_decision_ids_continue_after_a_restart(tmp_path: Path) -> None:
    path = decisions_path(tmp_path)
    log = DecisionLog(path)
    log.record(Decision(id=7, lever="admission", action="decrease", t=1, before={"limit": 4}, after={"limit": 2},
                        reason="x", outcome="applied"))
    log.close()
    again = DecisionLog(path)
    assert again.last_id == 7 and [d.id for d in again.decisions()] == [7]  # history survives a restart
    clock = Clock()
    stats, gate = gateway_parts(8, clock)
    ctl = Controller(ControllerConfig(ttft_p95_ms=500, fast_window_s=5, slow_enabled=False),
                     GatewayFeed(stats, clock=clock, watch_gpu=False), GateActuator(gate), None, again, clock=clock)
    run_ticks(ctl, stats, clock, 10, ttft=2.0)
    assert ctl.decisions()[0].id == 7 and ctl.decisions()[1].id == 8


def test_decisions_counter_moves_when_the_controller_decides(tmp_path: Path) -> None:
    """hosttune_controller_decisions_total{lever,action}: each new decision once (a later version of the same
    decision, its outcome, is not another), and decisions of a stopped controller are kept by the daemon."""
    path = decisions_path(tmp_path)
    old = DecisionLog(path)
    old.record(Decision(id=3, lever="knobs", action="step", t=1, before={"parallel": 4}, after={"parallel": 8},
                        reason="try", outcome="trial"))
    assert old.taken() == {("knobs", "step"): 1}
    old.record(Decision(id=3, lever="knobs", action="step", t=2, before={"parallel": 4}, after={"parallel": 8},
                        reason="try", outcome="kept"))
    assert old.taken() == {("knobs", "step"): 1}
    old.close()
    clock = Clock()
    stats, gate = gateway_parts(8, clock)
    ctl = Controller(ControllerConfig(ttft_p95_ms=500, fast_window_s=5, decrease_hold_s=2, slow_enabled=False),
                     GatewayFeed(stats, clock=clock, watch_gpu=False), GateActuator(gate), None, DecisionLog(path),
                     clock=clock)
    assert ctl.log.taken() == {}  # read back from the file: an earlier run's, not this one's
    run_ticks(ctl, stats, clock, 20, ttft=2.0)
    decreases = len([d for d in ctl.decisions() if d.action == "decrease"])
    assert decreases >= 1 and ctl.log.taken() == {("admission", "decrease"): decreases}
    taken = decisions_taken(ctl, Counter({("knobs", "step"): 2}))
    state = DaemonState(version="x", decisions=taken, knobs=controller_knobs(ctl))
    fams = parse_text(format_families(daemon_families(state)))
    labels = {"lever": "admission", "action": "decrease"}
    assert sample_value(fams, "hosttune_controller_decisions_total", labels) == decreases
    assert sample_value(fams, "hosttune_controller_decisions_total", {"lever": "knobs"}) == 2
    assert "hosttune_controller_knob" not in fams  # no knob actuator: the controller holds no knob


def test_decision_log_is_bounded_in_memory_and_complete_on_disk(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.jsonl", keep=3)
    for i in range(1, 6):
        d = Decision(id=i, lever="knobs", action="step", t=i, before={"parallel": 1}, after={"parallel": 2},
                     reason="try", outcome="trial")
        log.record(d)
        log.record(d.model_copy(update={"outcome": "kept", "outcome_reason": "paid"}))
    assert [d.id for d in log.decisions()] == [3, 4, 5]
    lines = (tmp_path / "d.jsonl").read_text().splitlines()
    assert len(lines) == 10
    assert [d.outcome for d in read_decisions(tmp_path / "d.jsonl")] == ["kept"] * 5
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(InputError) as e:
        read_decisions(tmp_path / "bad.jsonl")
    assert e.value.line == 1


def test_config_needs_a_ttft_slo_and_refuses_nonsense() -> None:
    with pytest.raises(InputError) as e:
        config_for("llamacpp", SloSpec())
    assert e.value.field == "slo.ttft_p95_ms"
    with pytest.raises(ValueError):
        ControllerConfig(ttft_p95_ms=500, min_limit=8, max_limit=4)
    with pytest.raises(ValueError):
        ControllerConfig(ttft_p95_ms=500, decrease_factor=1.5)
    torch = config_for("torch", SloSpec(ttft_p95_ms=800))
    assert [a.knob for a in torch.ladder] == ["max_batch"] and torch.concurrency_knob == "max_batch"


def test_ladder_neighbours_and_fallback_rungs() -> None:
    cfg = ControllerConfig(ttft_p95_ms=500, ladder=[Axis(knob="parallel", values=[1, 2, 4, 8]),
                                                     Axis(knob="ubatch", values=[128, 512])])
    # unset knobs are llama-server's defaults (parallel auto = 4, ubatch 512)
    assert candidates({"parallel": None, "ubatch": None}, cfg) == [
        {"parallel": 8, "ubatch": None}, {"parallel": 2, "ubatch": None}, {"parallel": None, "ubatch": 128}]
    assert candidates({"parallel": 3, "ubatch": 128, "batch": 256}, cfg) == [
        {"parallel": 4, "ubatch": 128, "batch": 256}, {"parallel": 2, "ubatch": 128, "batch": 256}]  # ub 512 > b
    assert step_down({"parallel": 1, "ctx": 600}, cfg.fallback, cfg.knob_defaults) == (
        {"parallel": 1, "ctx": 512}, "ctx 600 -> 512")
    bottom = {"parallel": 1, "ctx": 512, "cache_type_k": "q8_0", "cache_type_v": "q8_0", "gpu_layers": 0}
    assert step_down(bottom, cfg.fallback, cfg.knob_defaults) is None


def test_oom_reasons() -> None:
    assert is_oom("killed by SIGABRT (out of memory): CUDA error: out of memory")
    assert is_oom("killed by SIGKILL (the kernel OOM killer ran)")
    assert not is_oom("exit status 1: error: failed to load model")


# ----- restart actuator with the real supervisor --------------------------------------------------------------------

FAST = RestartPolicy(backoff_initial_s=3.0, crashloop_count=5, ready_timeout_s=10.0, startup_poll_s=0.05,
                     liveness_interval_s=0.2, stop_timeout_s=2.0)


def get(url: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    prefix = write_fake_server(tmp_path)
    port = free_port()
    spec = WorkerSpec(engine="command", argv=[*prefix, "--port", str(port)], port=port, parallel=4, ctx=4096)
    engine = CommandEngine(parent_death_signal=None)

    def build(s: WorkerSpec) -> Launch:
        return engine.launch(s, None, None)

    sup = Supervisor(spec, build, state_dir=tmp_path / "state", policy=FAST)
    sup.start()
    assert sup.wait_ready(10)
    try:
        yield sup
    finally:
        sup.stop()


@pytest.mark.process
def test_restart_actuator_applies_knobs_through_the_supervisor(supervisor: Supervisor) -> None:
    act = RestartActuator(supervisor)
    assert act.knobs()["parallel"] == 4 and act.knobs()["ctx"] == 4096 and act.ready()
    pid = supervisor.pid
    act.apply({"parallel": 2}, "controller: try parallel 4 -> 2")
    assert not act.ready()  # at once, before the supervisor thread has even stopped the old process
    deadline = time.monotonic() + 10
    while not act.ready():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert supervisor.spec.parallel == 2 and supervisor.spec.ctx == 4096 and supervisor.pid != pid
    assert act.poll() == []  # a restart we asked for is not a crash


@pytest.mark.process
def test_knobs_in_force_and_restarts_reach_the_daemon_series(supervisor: Supervisor) -> None:
    """hosttune_controller_knob and hosttune_worker_info follow the knobs the controller moved; the supervisor's
    restart is counted in hosttune_worker_restarts_total."""
    clock = Clock()
    stats, gate = gateway_parts(4, clock)
    act = RestartActuator(supervisor)
    ctl = Controller(ControllerConfig(ttft_p95_ms=500), GatewayFeed(stats, clock=clock, watch_gpu=False),
                     GateActuator(gate), act, clock=clock)
    assert controller_knobs(ctl) == {"parallel": 4.0, "ctx": 4096.0, "ubatch": 512.0, "batch": 2048.0}
    ctl._run(ctl.core._set_knobs({**ctl.core.knobs, "parallel": 2}, "test: a step"))  # what a kept step does
    deadline = time.monotonic() + 10
    while not act.ready():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    state = DaemonState(version="x", worker=worker_info(supervisor.spec, supervisor.status().restarts, None,
                                                         supervisor.status().crashes),
                        knobs=controller_knobs(ctl))
    fams = parse_text(format_families(daemon_families(state)))
    assert sample_value(fams, "hosttune_controller_knob", {"knob": "parallel"}) == 2
    assert sample_value(fams, "hosttune_worker_info", {"engine": "command", "slots": "2", "ctx_size": "4096"}) == 1
    assert sample_value(fams, "hosttune_worker_restarts_total") == 1
    assert sample_value(fams, "hosttune_worker_crashes_total") == 0   # a knob restart is not a crash


@pytest.mark.process
def test_oom_crash_falls_back_at_once_before_the_backoff_restart(supervisor: Supervisor, tmp_path: Path) -> None:
    clock = Clock()
    stats, gate = gateway_parts(4, clock)
    act = RestartActuator(supervisor)
    cfg = ControllerConfig(ttft_p95_ms=500, cooldown_s=3600)
    ctl = Controller(cfg, GatewayFeed(stats, clock=clock, watch_gpu=False), GateActuator(gate), act,
                     DecisionLog(decisions_path(tmp_path)), clock=clock)
    crashed_at = time.monotonic()
    with contextlib.suppress(Exception):
        get(f"{supervisor.base_url}/oom")  # the worker prints "CUDA error: out of memory" and aborts
    assert supervisor.wait_for({WorkerState.RESTARTING}, 5)
    assert supervisor.wait_ready(10)
    # restarted by the controller with fewer slots, well before the supervisor's 3 s back-off would have
    assert time.monotonic() - crashed_at < FAST.backoff_initial_s
    assert supervisor.spec.parallel == 2
    falls = [d for d in ctl.decisions() if d.action == "fallback"]
    assert len(falls) == 1 and falls[0].before["parallel"] == 4 and falls[0].after["parallel"] == 2
    assert "out of memory" in falls[0].reason and falls[0].outcome == "fallback"
    # halving the slots halved the admission limit with them
    assert gate.limit == 2
    # the crash is counted once: the next ticks take no further step down
    for _ in range(3):
        clock.t += 1
        ctl.tick()
    assert supervisor.spec.parallel == 2 and len([d for d in ctl.decisions() if d.action == "fallback"]) == 1


# ----- live actuator (the torch worker's control contract) ----------------------------------------------------------

class TorchControlDouble:
    """Stands in for agent.worker.torch_control.TorchWorkerControl: same state fields, set by update()."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {"max_batch": 4, "kv_budget_tokens": None, "oom_total": 0, "last_ooms": []}
        self.updates: list[dict[str, Any]] = []

    def state(self) -> Any:
        return type("State", (), dict(self.fields))()

    def update(self, **fields: Any) -> Any:
        self.updates.append(fields)
        self.fields.update(fields)
        return self.state()


def test_live_actuator_sets_knobs_without_restart_and_reports_worker_ooms() -> None:
    ctl = TorchControlDouble()
    act = LiveActuator(ctl)
    assert act.live and act.ready() and act.knobs() == {"max_batch": 4, "kv_budget_tokens": None}
    act.apply({"max_batch": 8, "kv_budget_tokens": None}, "try")
    assert ctl.updates == [{"max_batch": 8, "kv_budget_tokens": None}]
    assert act.poll() == []
    ev = type("Oom", (), {"error": "MemoryError", "phase": "decode", "rows": 8, "max_batch_before": 8,
                          "max_batch_after": 4})()
    ctl.fields.update(oom_total=1, max_batch=4, last_ooms=[ev])
    events = act.poll()
    assert events == [WorkerEvent("oom", "MemoryError in decode at batch 8; max_batch 8 -> 4",
                                  knobs={"max_batch": 4, "kv_budget_tokens": None})]


def test_worker_shrinking_itself_is_followed_not_fought() -> None:
    from agent.control.core import ControlCore

    cfg = config_for("torch", SloSpec(ttft_p95_ms=800))
    core = ControlCore(cfg, {"max_batch": 8, "kv_budget_tokens": None}, 8, 0.0)
    actions = core.on_event(WorkerEvent("oom", "MemoryError", knobs={"max_batch": 4, "kv_budget_tokens": None}),
                            5.0)
    assert not any(isinstance(a, SetKnobs) for a in actions)    # the worker already did it
    assert SetLimit(4) in actions
    d = [d for d in core.pending if d.action == "fallback"][-1]
    assert d.after == {"max_batch": 4, "kv_budget_tokens": None} and "the worker changed" in d.reason
    assert core.knobs["max_batch"] == 4
    # going back up to 8 is tabu for a while
    assert all(c["max_batch"] != 8 for c in candidates(core.knobs, cfg)
               if core.tabu.get("max_batch=4 > max_batch=8", 0) <= 5.0)


@pytest.mark.process
def test_drain_holds_new_requests_until_the_worker_is_idle_then_restarts(supervisor: Supervisor) -> None:
    drain = Drain()
    inner = SupervisedWorker(supervisor)
    endpoint = drain.wrap(inner)
    assert endpoint.is_ready() and endpoint.base_url() == inner.base_url()
    busy = iter([2, 2, 1, 0])
    seen: list[tuple[float, bool, int]] = []

    def busy_now(url: str | None) -> int:
        n = next(busy, 0)
        seen.append((time.monotonic(), endpoint.is_ready(), supervisor.status().starts))
        return n

    act = RestartActuator(supervisor, drain=drain, busy=busy_now)
    starts = supervisor.status().starts
    act.apply({"parallel": 2}, "controller: try parallel 4 -> 2")
    assert not endpoint.is_ready()   # held from the moment the step is decided
    deadline = time.monotonic() + 15
    while not act.ready():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # no restart while the worker was busy, and the gateway saw "not ready" throughout
    assert [s[2] for s in seen] == [starts] * 4 and not any(s[1] for s in seen)
    assert supervisor.status().starts == starts + 1 and supervisor.spec.parallel == 2
    assert not drain.active and endpoint.is_ready()
    assert act.last_drain_s is not None and act.last_drain_s >= 0.3
