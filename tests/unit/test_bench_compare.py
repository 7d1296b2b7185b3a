"""The compare loop (agent/bench/compare.py) with in-memory arms: order, prechecks, failure handling, the report;
and the B arm's files (the derived policy loads, with the knobs the controller settled on)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.bench.client import RequestResult
from agent.bench.compare import CompareSpec, RoundLoad, run_compare_loop
from agent.bench.compare_arms import DaemonArm, settled_knobs
from agent.bench.compare_table import print_compare
from agent.bench.load import LevelRun
from agent.errors import InputError
from agent.hostfs import HostPaths
from agent.inspect import collect
from agent.model_files import resolve_model
from agent.policy.loader import find_policy, load_policy

SPEC = CompareSpec(scenario="mix", rounds=5, duration_s=1.0, ttft_slo_s=0.5, itl_slo_s=None,
                   converge_timeout_s=10.0, resamples=2000, seed=1)


class FakeArm:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log
        self.running = False

    def start(self) -> str:
        assert not self.running
        self.running = True
        self.log.append(f"{self.name}.start")
        return f"http://{self.name}"

    def after_round(self) -> dict[str, Any]:
        return {"name": self.name}

    def stop(self) -> None:
        if self.running:
            self.log.append(f"{self.name}.stop")
        self.running = False

    def describe(self) -> dict[str, Any]:
        return {"what": f"fake {self.name}"}

    def converge(self, load: RoundLoad, timeout_s: float) -> dict[str, Any]:
        self.log.append(f"{self.name}.converge")
        load(self.start())
        self.stop()
        return {"converged": True, "knobs": {"parallel": 2}, "summary": "converged on parallel=2"}


def make_load(log: list[str], arms: dict[str, FakeArm]) -> RoundLoad:
    """B serves twice A's tokens; every third A request misses the TTFT SLO."""
    calls = {"A": 0, "B": 0}

    def load(url: str) -> LevelRun:
        arm = url.removeprefix("http://")
        assert arms[arm].running, "load sent to a stopped arm"
        log.append(f"load {arm}")
        calls[arm] += 1
        per = 10 if arm == "A" else 20
        results = [RequestResult(kind="chat", start=i, end=i + 1, ok=True, tokens_out=per + calls[arm] % 2,
                                 ttft_s=0.9 if arm == "A" and i % 3 == 0 else 0.1, itl_s=[0.01] * per)
                   for i in range(6)]
        return LevelRun("closed", 4, results, wall_s=2.0)
    return load


def run(log: list[str], precheck: Any = None, restore: Any = None) -> tuple[dict[str, Any], dict[str, FakeArm]]:
    arms = {"A": FakeArm("A", log), "B": FakeArm("B", log)}
    report = run_compare_loop(SPEC, arms["A"], arms["B"], make_load(log, arms),
                              precheck or (lambda: log.append("precheck")),
                              restore or (lambda: log.append("restore")), log.append)
    return report, arms


def test_rounds_alternate_after_one_converge_and_every_a_round_is_prechecked() -> None:
    log: list[str] = []
    report, _ = run(log)
    steps = [e for e in log if not e.startswith(("converge", "round"))]
    one_round = ["precheck", "A.start", "load A", "A.stop", "B.start", "load B", "B.stop"]
    assert steps == ["precheck", "B.converge", "B.start", "load B", "B.stop", *one_round * 5, "precheck"]
    assert report["order"] == ["precheck start", "converge", "precheck 1", "A1", "B1", "precheck 2", "A2", "B2",
                               "precheck 3", "A3", "B3", "precheck 4", "A4", "B4", "precheck 5", "A5", "B5",
                               "precheck end"]
    assert [(r["arm"], r["round"]) for r in report["rounds"]] == [("A", 1), ("B", 1), ("A", 2), ("B", 2),
                                                                  ("A", 3), ("B", 3), ("A", 4), ("B", 4),
                                                                  ("A", 5), ("B", 5)]
    assert any(line.startswith("round 2/5 B: goodput") for line in log)   # progress lines


def test_report_figures_and_ratios() -> None:
    report, _ = run([])
    a1, b1 = report["rounds"][0], report["rounds"][1]
    assert a1["tokens_per_s"] == pytest.approx(6 * 11 / 2.0) and b1["tokens_per_s"] == pytest.approx(6 * 20 / 2)
    assert a1["slo_met"] == 4 and a1["goodput_requests_per_s"] == pytest.approx(2.0)
    assert a1["goodput_tokens_per_s"] == pytest.approx(4 * 11 / 2.0) and b1["slo_met"] == 6
    assert a1["arm_state"] == {"name": "A"} and a1["ttft_s"]["p50"] == pytest.approx(0.1)
    tps = report["ratios"]["tokens_per_s"]
    mean_a = (66 + 60 + 66 + 60 + 66) / 5 / 2
    mean_b = (120 + 126 + 120 + 126 + 120) / 5 / 2   # the converge load was B's first call
    assert tps["ratio"] == pytest.approx(mean_b / mean_a)
    assert tps["low"] <= tps["ratio"] <= tps["high"] and tps["low"] > 1.5
    assert set(report["ratios"]) == {"goodput_requests_per_s", "goodput_tokens_per_s", "tokens_per_s"}
    assert report["ratios"]["goodput_requests_per_s"]["ratio"] == pytest.approx(6 / 4)
    assert report["converge"]["knobs"] == {"parallel": 2} and report["host_restored"] is True
    assert report["arms"] == {"A": {"what": "fake A"}, "B": {"what": "fake B"}}
    out = io.StringIO()
    print_compare({**report, "slo": {"ttft_ms": 500, "itl_ms": None}}, out)
    text = out.getvalue()
    assert "B/A tokens/s: 1.9" in text and "95% paired bootstrap interval" in text and "A mean (5)" in text


def test_a_touched_host_stops_everything_and_restores() -> None:
    log: list[str] = []
    checks = {"n": 0}

    def precheck() -> None:
        checks["n"] += 1
        log.append("precheck")
        if checks["n"] == 3:
            raise InputError("sysctl:vm.swappiness: was '60', now '10'")

    with pytest.raises(InputError, match=r"vm\.swappiness"):
        run(log, precheck)
    assert log[-2:] == ["precheck", "restore"]
    assert log.count("A.start") == 1 and log.count("B.start") == 2   # converge + round 1, none after the check


def test_a_failing_round_stops_the_running_arm_then_restores() -> None:
    log: list[str] = []
    arms = {"A": FakeArm("A", log), "B": FakeArm("B", log)}
    good = make_load(log, arms)

    def load(url: str) -> LevelRun:
        if url == "http://A" and log.count("load A") == 1:
            raise RuntimeError("engine died")
        return good(url)

    with pytest.raises(RuntimeError):
        run_compare_loop(SPEC, arms["A"], arms["B"], load, lambda: None, lambda: log.append("restore"))
    assert log[-2:] == ["A.stop", "restore"] and not arms["A"].running and not arms["B"].running


@pytest.mark.parametrize(("change", "field"), [({"rounds": 1}, "--rounds"), ({"duration_s": 0}, "--duration"),
                                               ({"converge_timeout_s": -1}, "--converge-timeout"),
                                               ({"ttft_slo_s": 0.0}, "--slo-ttft-ms")])
def test_bad_specs_are_refused_before_anything_starts(change: dict[str, Any], field: str) -> None:
    log: list[str] = []
    spec = CompareSpec(**{**SPEC.__dict__, **change})
    arms = {"A": FakeArm("A", log), "B": FakeArm("B", log)}
    with pytest.raises(InputError) as err:
        run_compare_loop(spec, arms["A"], arms["B"], make_load(log, arms), lambda: None, lambda: None)
    assert err.value.field == field and log == []


def test_settled_knobs_take_a_trials_start_and_only_plain_llamacpp_knobs() -> None:
    status = {"knobs": {"parallel": 8, "ubatch": 512}, "trial": {"decision": 3, "from": {"parallel": 4,
              "ubatch": 256, "ctx": None, "flash_attn": True, "cache_type_k": "q8_0", "evil": 1,
              "cache_type_v": "../../etc"}, "to": {"parallel": 8}}}
    assert settled_knobs(status) == {"parallel": 4, "ubatch": 256, "cache_type_k": "q8_0"}
    assert settled_knobs({"knobs": {"parallel": 2, "batch": None}, "trial": None}) == {"parallel": 2}
    assert settled_knobs({}) == {}


def test_daemon_arm_files_extend_the_policy_with_the_converged_knobs(host: HostPaths, tmp_path: Path) -> None:
    source = find_policy("llm-cpu-throughput")
    model = resolve_model("default")
    arm = DaemonArm(source, "llm-cpu-throughput", model, tmp_path / "work")
    arm.knobs, arm.limit = {"parallel": 2, "ubatch": 256}, 9999
    config = yaml.safe_load(arm.write_files().read_text())
    assert config["revert_on_stop"] is True and config["state_dir"] == str(tmp_path / "work/daemon-state")
    assert config["gateway"] == {"port": arm.gateway_port, "limit": 4096} and config["api"]["port"] == arm.api_port
    assert len({arm.gateway_port, arm.api_port}) == 2
    loaded = load_policy(Path(config["policy"]), collect(host)).policy
    assert loaded.worker is not None
    assert (loaded.worker.parallel, loaded.worker.ubatch, loaded.worker.model) == (2, 256, str(model))
    assert loaded.worker.ctx == 16384                  # the rest of the policy under test is kept
    assert loaded.slo is not None and loaded.slo.ttft_p95_ms == 2000
    assert arm.argv(Path("c.yaml"))[-4:] == ["agent", "daemon", "--config", "c.yaml"]


def test_the_bench_parser_takes_the_compare_flags_beside_the_scenario_and_slo_flags() -> None:
    from agent.commands import bench as bench_command

    p = argparse.ArgumentParser()
    bench_command.register(p.add_subparsers())
    args = p.parse_args(["bench", "--compare", "--scenario", "chat", "--rounds", "7", "--converge-timeout", "0",
                         "--slo-itl-ms", "80"])
    assert (args.compare, args.rounds, args.converge_timeout, args.slo_itl_ms, args.scenario) == (
        True, 7, 0.0, 80.0, "chat")


def test_restore_runs_even_when_stopping_an_arm_fails() -> None:
    log: list[str] = []

    class BadStop(FakeArm):
        def stop(self) -> None:
            if self.running:
                self.running = False
                raise OSError("kill failed")

    arms = {"A": BadStop("A", log), "B": FakeArm("B", log)}
    with pytest.raises(OSError):
        run_compare_loop(SPEC, arms["A"], arms["B"], make_load(log, arms), lambda: None,
                         lambda: log.append("restore"))
    assert log[-1] == "restore"
