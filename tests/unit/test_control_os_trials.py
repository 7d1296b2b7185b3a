"""OS trials in the control law and the controller: tried once no knob step is left, one at a time, measured with the
knob steps' windows and rules, kept when they pay (or are neutral and required), undone otherwise; their
builders from host facts; the policy's `controller:` section refusing hostile input.

The world here is synthetic: a saturated worker whose throughput is `base` tokens/s, times `factor` while the OS
change is on. Expected outcomes follow from those two numbers and the dead band, not from the controller."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.api.replies import ControllerReply
from agent.commands.controller import run_decisions
from agent.control.actions import SetKnobs, SetLimit, WorkerEvent
from agent.control.config import Axis, ControllerConfig
from agent.control.controller import Controller
from agent.control.core import ControlCore
from agent.control.decisions import Decision, DecisionLog
from agent.control.observe import Finished, Tick
from agent.control.os_trials import OsStep, OsTrial, os_trials_for
from agent.errors import InputError
from agent.policy.controller_spec import ControllerSpec
from agent.policy.loader import load_policy_text
from agent.policy.model import Policy, ThpSpec
from tests.support.policy_hosts import ci_vm, gpu_server
from tests.unit.test_control_law import final

TOKENS = 32  # per request


def trial(name: str = "thp", required: bool = False) -> OsTrial:
    return OsTrial(name=name, before={"thp.enabled": "madvise"}, after={"thp.enabled": "always"},
                   fragment=Policy(name="os-trial-thp", thp=ThpSpec(enabled="always")), required=required)


def cfg(**kw: Any) -> ControllerConfig:
    base: dict[str, Any] = {"ttft_p95_ms": 1000, "measure_s": 20, "max_measure_s": 40, "settle_s": 2,
                            "cooldown_s": 10, "min_requests": 10, "tabu_s": 300, "ladder": [],
                            "os_trials": [trial()]}
    base.update(kw)
    return ControllerConfig.model_validate(base)


class OsWorld:
    """A saturated worker: `base` tokens/s, times `factor` while the OS change is on; TTFT `ttft_s`, or
    `on_ttft_s` while on."""

    def __init__(self, base: float, factor: float, ttft_s: float = 0.2, on_ttft_s: float | None = None) -> None:
        self.base, self.factor, self.ttft_s, self.on_ttft_s = base, factor, ttft_s, on_ttft_s
        self.now = 0.0
        self.on = False
        self.ops: list[str] = []
        self.knob_steps: list[dict[str, Any]] = []
        self.debt = 0.0

    def tick(self) -> Tick:
        self.now += 1.0
        tps = self.base * (self.factor if self.on else 1.0)
        self.debt += tps / TOKENS
        n = int(self.debt)
        self.debt -= n
        ttft = self.on_ttft_s if self.on and self.on_ttft_s is not None else self.ttft_s
        done = tuple(Finished(at=self.now, outcome="ok", ttft_s=ttft, queue_wait_s=0.0, e2e_s=1.0,
                              tokens_out=TOKENS, itl_s=(0.02,)) for _ in range(n))
        return Tick(t=self.now, finished=done, queued=3, in_flight=4, limit=4)

    def act(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, OsStep):
                self.ops.append(f"{a.op} {a.trial.name}")
                if a.op == "apply":
                    self.on = True
                elif a.op == "undo":
                    self.on = False
            elif isinstance(a, SetKnobs):
                self.knob_steps.append(a.knobs)


def run(core: ControlCore, world: OsWorld, seconds: int,
        each: Callable[[ControlCore, OsWorld], None] | None = None) -> list[Decision]:
    for _ in range(seconds):
        world.act(core.step(world.tick()))
        if each is not None:
            each(core, world)
    return final(core.pending)


def os_decisions(ds: list[Decision]) -> list[Decision]:
    return [d for d in ds if d.lever == "os"]


# ----- the law ------------------------------------------------------------------------------------------------------

def test_an_os_trial_that_pays_is_kept_with_its_figures_and_not_tried_again() -> None:
    c = cfg()
    core = ControlCore(c, {}, 4, 0.0)
    world = OsWorld(base=400, factor=1.2)
    ds = os_decisions(run(core, world, 200))
    assert len(ds) == 1, ds
    d = ds[0]
    assert (d.action, d.outcome, d.before, d.after) == ("step", "kept", {"thp.enabled": "madvise"},
                                                        {"thp.enabled": "always"})
    assert d.measured_before is not None and d.measured_after is not None
    gain = d.measured_after["tokens_per_s"] / d.measured_before["tokens_per_s"] - 1
    assert gain * 100 >= c.dead_band_pct
    assert world.ops == ["apply thp", "keep thp"] and world.on
    assert core.status()["os_trials"] == {"thp": "kept"}


def test_an_os_trial_that_loses_is_undone_and_tabu_until_tabu_s() -> None:
    c = cfg(tabu_s=300)
    core = ControlCore(c, {}, 4, 0.0)
    world = OsWorld(base=400, factor=0.8)
    ds = os_decisions(run(core, world, 200))
    assert [(d.outcome, "did not pay" in (d.outcome_reason or "")) for d in ds] == [("rolled_back", True)]
    assert world.ops == ["apply thp", "undo thp"] and not world.on
    assert core.tabu["os:thp"] == pytest.approx((ds[0].decided_t or 0) + 300)
    # within tabu_s: not tried again; after it, once more
    assert os_decisions(run(core, world, 100)) == ds
    more = os_decisions(run(core, world, 300))
    assert len(more) == 2 and more[1].t - (ds[0].decided_t or 0) >= 300


def test_a_neutral_trial_is_undone_unless_the_policy_requires_it() -> None:
    for required, outcome, ops in ((False, "rolled_back", ["apply thp", "undo thp"]),
                                   (True, "kept", ["apply thp", "keep thp"])):
        core = ControlCore(cfg(os_trials=[trial(required=required)]), {}, 4, 0.0)
        world = OsWorld(base=400, factor=1.0)
        ds = os_decisions(run(core, world, 150))
        assert [d.outcome for d in ds] == [outcome], required
        assert world.ops == ops
        if required:
            assert "neutral, kept as the policy requires it" in (ds[0].outcome_reason or "")


def test_a_required_trial_that_loses_or_breaks_the_slo_is_still_undone() -> None:
    core = ControlCore(cfg(os_trials=[trial(required=True)]), {}, 4, 0.0)
    world = OsWorld(base=400, factor=0.8)
    assert [d.outcome for d in os_decisions(run(core, world, 150))] == ["rolled_back"]
    core = ControlCore(cfg(os_trials=[trial(required=True)]), {}, 4, 0.0)
    world = OsWorld(base=400, factor=1.3, on_ttft_s=3.0)   # faster, but the SLO (1 s) breaks
    ds = os_decisions(run(core, world, 150))
    assert [d.outcome for d in ds] == ["rolled_back"] and "SLO not held" in (ds[0].outcome_reason or "")
    assert world.ops == ["apply thp", "undo thp"]


def test_oom_or_a_crash_during_an_os_trial_undoes_it_at_once() -> None:
    for ev, outcome in ((WorkerEvent("oom", "killed by SIGKILL (the kernel OOM killer ran)"), "fallback"),
                        (WorkerEvent("crash", "killed by SIGSEGV"), "rolled_back")):
        core = ControlCore(cfg(), {"parallel": 4}, 4, 0.0)
        world = OsWorld(base=400, factor=1.0)
        run(core, world, 40)
        assert core.trial is not None and core.trial.os is not None and world.on
        actions = core.on_event(ev, world.now)
        world.act(actions)
        assert not world.on and world.ops == ["apply thp", "undo thp"], ev
        assert not any(isinstance(a, SetKnobs) for a in actions)   # the knobs were not the trial
        d = os_decisions(final(core.pending))
        assert d[-1].outcome == outcome and core.trial is None and "os:thp" in core.tabu


def test_oom_with_the_worker_shrinking_itself_during_an_os_trial_also_undoes_it() -> None:
    core = ControlCore(cfg(concurrency_knob="max_batch"), {"max_batch": 8}, 4, 0.0)
    world = OsWorld(base=400, factor=1.0)
    run(core, world, 40)
    assert core.trial is not None
    world.act(core.on_event(WorkerEvent("oom", "CUDA out of memory", knobs={"max_batch": 4}), world.now))
    assert world.ops == ["apply thp", "undo thp"] and core.knobs == {"max_batch": 4}
    assert os_decisions(final(core.pending))[-1].outcome == "fallback"


def test_os_trials_wait_for_the_knob_search_and_never_overlap_a_knob_step() -> None:
    """One trial at a time: while a knob step is measured no OS trial starts, and while an OS trial is measured no
    knob moves (their effects would be confounded)."""
    c = cfg(ladder=[Axis(knob="parallel", values=[2, 4])], knob_defaults={})
    core = ControlCore(c, {"parallel": 4}, 4, 0.0)
    world = OsWorld(base=400, factor=1.0)

    knobs_at_os_start: list[int] = []

    def check(core: ControlCore, world: OsWorld) -> None:
        tr = core.trial
        if tr is not None and tr.os is None:
            assert not world.on, "an OS change is on during a knob step"
        if tr is not None and tr.os is not None:
            knobs_at_os_start.append(len(world.knob_steps))
            assert len(set(knobs_at_os_start)) == 1, "a knob moved during an OS trial"

    ds = run(core, world, 300, each=check)
    knob = [d for d in ds if d.lever == "knobs"]
    os_ = os_decisions(ds)
    assert knob and os_, ds
    assert os_[0].t >= (knob[0].decided_t or 0), "the OS trial started before the knob step was settled"


def test_no_os_trial_without_an_os_actuator() -> None:
    class Feed:
        def read(self) -> Tick:
            return Tick(t=0.0)

    class Limit:
        limit = 4

        def set_limit(self, limit: int) -> None:
            self.limit = limit

    ctl = Controller(cfg(), Feed(), Limit(), KnobsAlwaysReady())
    assert ctl.cfg.os_trials == [] and ctl.core.cfg.os_trials == []


# ----- the controller with an OS actuator ---------------------------------------------------------------------------

class KnobsAlwaysReady:
    live = True

    def knobs(self) -> dict[str, Any]:
        return {}

    def apply(self, knobs: dict[str, Any], reason: str) -> None:
        raise AssertionError("no knob step expected")

    def ready(self) -> bool:
        return True

    def poll(self) -> list[WorkerEvent]:
        return []

    def subscribe(self, callback: Callable[[WorkerEvent], None]) -> None:
        return None


class FakeOs:
    def __init__(self, world: OsWorld, fail: set[str]) -> None:
        self.world, self.fail = world, fail

    def run(self, step: OsStep) -> None:
        if step.op in self.fail:
            if step.op == "keep":   # another mutation ended the open trial: the host is back as before
                self.world.on = False
            raise RuntimeError(f"{step.op} refused")
        self.world.act([step])


def controller_run(fail: set[str], factor: float, seconds: int = 200) -> tuple[Controller, OsWorld]:
    world = OsWorld(base=400, factor=factor)

    class Feed:
        def read(self) -> Tick:
            return world.tick()

    class Limit:
        limit = 4

        def set_limit(self, limit: int) -> None:
            self.limit = limit

    ctl = Controller(cfg(), Feed(), Limit(), KnobsAlwaysReady(), clock=lambda: world.now,
                     os_actuator=FakeOs(world, fail))
    for _ in range(seconds):
        ctl.tick()
    return ctl, world


def test_controller_hands_os_steps_to_its_actuator_and_logs_them() -> None:
    ctl, world = controller_run(set(), factor=1.25)
    assert world.ops == ["apply thp", "keep thp"]
    ds = [d for d in ctl.decisions() if d.lever == "os"]
    assert [d.outcome for d in ds] == ["kept"]
    assert ctl.status()["os_trials"] == {"thp": "kept"}


def test_a_refused_apply_aborts_the_trial_and_a_lost_keep_is_recorded() -> None:
    ctl, world = controller_run({"apply"}, factor=1.25, seconds=60)
    ds = [d for d in ctl.decisions() if d.lever == "os"]
    assert ds and ds[0].outcome == "aborted" and "apply refused" in (ds[0].outcome_reason or "")
    assert not world.on and ctl.core.trial is None
    ctl, world = controller_run({"keep"}, factor=1.25)
    ds = [d for d in ctl.decisions() if d.lever == "os"]
    assert [(d.action, d.outcome) for d in ds[:2]] == [("step", "kept"), ("rollback", "aborted")]
    assert "could not keep OS trial thp" in ds[1].reason
    assert ds[1].before == {"thp.enabled": "always"} and ds[1].after == {"thp.enabled": "madvise"}
    # no longer kept, and tabu like any trial that did not hold
    assert ds[2:] == [] and thp_state(ctl) == "pending" and "os:thp" in ctl.core.tabu


def thp_state(ctl: Controller) -> str:
    return str(ctl.status()["os_trials"]["thp"])


# ----- which trials a host gets -------------------------------------------------------------------------------------

def test_builders_follow_the_host_facts() -> None:
    spec = ControllerSpec(os_trials=["thp", "numa_balancing", "governor", "thp_defrag"], required=["thp"])
    server = gpu_server()
    server = server.model_copy(update={"sysctl": {**server.sysctl, "kernel.numa_balancing": "1"}})
    trials, skipped = os_trials_for(spec, server, can_restart=True)
    names = [t.name for t in trials]
    assert "numa_balancing" in names and len(server.cpu.numa_nodes) >= 2
    thp = next(t for t in trials if t.name == "thp")
    assert thp.required and thp.before == {"thp.enabled": server.thp.enabled}
    assert thp.after["thp.enabled"] == ("madvise" if server.thp.enabled == "always" else "always")
    assert thp.fragment.thp is not None and thp.fragment.thp.enabled == thp.after["thp.enabled"]
    assert not next(t for t in trials if t.name != "thp").required
    numa = next(t for t in trials if t.name == "numa_balancing")
    assert numa.after == {"kernel.numa_balancing": "0"} and numa.fragment.sysctl == {"kernel.numa_balancing": 0}
    vm = ci_vm()
    trials, skipped = os_trials_for(spec, vm, can_restart=True)
    assert len(vm.cpu.numa_nodes) == 1 and "numa_balancing" in skipped and "NUMA node" in skipped["numa_balancing"]
    assert not vm.cpufreq.available and "governor" in skipped and "cpufreq" in skipped["governor"]
    assert [t.name for t in trials] == ["thp", "thp_defrag"]
    assert os_trials_for(None, vm) == ([], {})


@pytest.mark.parametrize(("section", "message"), [
    ("os_trials: [thp, swap_everything]", "swap_everything"),
    ("os_trials: [thp, thp]", "listed twice"),
    ("os_trials: [thp]\n  required: [governor]", "not in os_trials"),
    ("os_trials: thp", "os_trials"),
    ("os_trials: [thp]\n  shell: rm -rf /", "shell"),
])
def test_the_controller_section_refuses_hostile_input_naming_the_field(tmp_path: Path, section: str,
                                                                        message: str) -> None:
    text = f"name: t\ncontroller:\n  {section}\n"
    with pytest.raises(InputError, match=message) as err:
        load_policy_text(text, tmp_path / "p.yaml", search_path=[])
    assert err.value.line is not None and err.value.line >= 2


def test_the_controller_section_loads() -> None:
    spec = ControllerSpec.model_validate({"os_trials": ["thp", "governor"], "required": ["thp"]})
    assert spec.os_trials == ["thp", "governor"] and spec.required == ["thp"]


# ----- where OS trials show: `hosttune controller decisions`, GET /v1/controller's reply -----------------------

def test_os_decisions_round_trip_through_the_log_the_cli_and_the_api_reply(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:

    def main(argv: list[str]) -> int:   # the command's own entry (agent.cli's main probes NVML: a process)
        file, lever = Path(argv[argv.index("--file") + 1]), argv[argv.index("--lever") + 1]
        return run_decisions(argparse.Namespace(file=file, lever=lever, last=None, json="--json" in argv,
                                                state_dir=str(tmp_path)))

    log = DecisionLog(tmp_path / "decisions.jsonl")
    ctl, _world = controller_run(set(), factor=1.25)
    for d in ctl.decisions():
        log.record(d)
    log.close()
    assert main(["controller", "decisions", "--file", str(tmp_path / "decisions.jsonl"), "--lever", "os",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(d["lever"], d["outcome"], d["after"]) for d in out] == [("os", "kept", {"thp.enabled": "always"})]
    assert out[0]["measured_before"]["tokens_per_s"] < out[0]["measured_after"]["tokens_per_s"]
    assert main(["controller", "decisions", "--file", str(tmp_path / "decisions.jsonl"), "--lever", "os"]) == 0
    table = capsys.readouterr().out
    assert "thp.enabled=madvise -> thp.enabled=always" in table and "kept" in table
    reply = ControllerReply(enabled=True, status=ctl.status(), decisions=ctl.decisions())
    assert reply.status is not None and reply.status["os_trials"] == {"thp": "kept"}
    assert any(d.lever == "os" for d in reply.decisions)


def test_rolling_back_an_os_trial_returns_to_the_baseline_limit_as_a_knob_rollback_does() -> None:
    core = ControlCore(cfg(fast_enabled=False), {"parallel": 4}, 4, 0.0)
    world = OsWorld(base=400, factor=1.0)
    run(core, world, 40)
    tr = core.trial
    assert tr is not None and tr.os is not None and tr.limit == 4
    core.adm.rescale(7, world.now)   # the limit moved during the trial
    actions = core.apply_failed("the host refused")
    assert next(a for a in actions if isinstance(a, OsStep)).op == "undo"
    assert SetLimit(4) in actions and core.adm.limit == 4


def test_status_keeps_trial_from_to_as_knobs_and_shows_the_os_change_as_os_trial() -> None:
    core = ControlCore(cfg(), {"parallel": 4}, 4, 0.0)
    world = OsWorld(base=400, factor=1.0)
    run(core, world, 40)
    st = core.status()
    assert st["trial"]["from"] == st["trial"]["to"] == {"parallel": 4}
    assert st["os_trial"] == {"decision": st["trial"]["decision"], "name": "thp",
                              "from": {"thp.enabled": "madvise"}, "to": {"thp.enabled": "always"}}
    assert ControlCore(cfg(), {"parallel": 4}, 4, 0.0).status()["os_trial"] is None


def test_thp_trials_need_a_worker_restart_and_are_not_offered_without_one() -> None:
    """THP changes only new anonymous faults; llama-server allocates at start: without a restart the trial always
    measures neutral, so the controller (which does not restart around OS trials) is not offered them."""
    vm = ci_vm()
    spec = ControllerSpec(os_trials=["thp", "thp_defrag"])
    built, _ = os_trials_for(spec, vm, can_restart=True)
    assert [t.restart for t in built] == [True, True]
    trials, skipped = os_trials_for(spec, vm)
    assert trials == [] and set(skipped) == {"thp", "thp_defrag"}
    assert all("restart the worker" in why for why in skipped.values())
