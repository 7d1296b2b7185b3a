"""`hosttune bench --compare`'s whole loop with processes on both arms: A is a fake llama-server started and stopped
for every round, B the real DaemonArm driving a fake daemon process (tests/support/compare_fakes.py): the converge
phase, the knobs passed on to every B round, SIGTERM after each, the precheck before every A round, the JSON."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.bench.compare import CompareSpec, run_compare_loop
from agent.bench.compare_arms import DaemonArm
from agent.bench.compare_cli import round_load, write_outputs
from agent.commands.bench import register
from tests.support.gateway_fakes import FakeWorker

pytestmark = pytest.mark.process
FAKE_DAEMON = Path(__file__).parents[1] / "support" / "compare_fakes.py"
ROOT = Path(__file__).parents[2]


class FakeDefaultsArm:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.worker: FakeWorker | None = None

    def start(self) -> str:
        self.log.append("A.start")
        self.worker = FakeWorker().start()
        return self.worker.url

    def after_round(self) -> dict[str, Any]:
        return {"requests": self.worker.state.requests if self.worker else None}

    def stop(self) -> None:
        if self.worker is not None:
            self.log.append("A.stop")
            self.worker.close()
            self.worker = None

    def describe(self) -> dict[str, Any]:
        return {"what": "fake llama-server"}


class FakeDaemonArm(DaemonArm):
    def __init__(self, log: list[str], work: Path) -> None:
        super().__init__(Path("policies/llm-cpu-throughput.yaml"), "llm-cpu-throughput", Path("model.gguf"), work,
                         ready_timeout_s=60, stop_timeout_s=20)
        self.log = log

    def argv(self, config: Path) -> list[str]:
        return [sys.executable, str(FAKE_DAEMON), "--config", str(config)]

    def start(self) -> str:
        self.log.append("B.start")
        return super().start()

    def stop(self) -> None:
        if self.proc is not None:
            self.log.append("B.stop")
        super().stop()


def args_for(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["bench", "--compare", "--concurrency", "2", "--duration", "2", "--warmup", "0",
                              "--max-tokens", "4", "--long-prompt-words", "40", *extra])


@pytest.mark.parametrize("scenario", ["mix", "multiturn"])
def test_compare_loop_alternates_prechecks_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       scenario: str) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    log: list[str] = []
    args = args_for(tmp_path, "--json", "--out", str(tmp_path / "c.json"))
    spec = CompareSpec(scenario=scenario, rounds=5, duration_s=1.0, ttft_slo_s=2.0, itl_slo_s=None,
                       converge_timeout_s=30.0, resamples=2000)
    arm_b = FakeDaemonArm(log, tmp_path / "work")
    report = run_compare_loop(spec, FakeDefaultsArm(log), arm_b, round_load(args, scenario, 2, None),
                              lambda: log.append("precheck"), lambda: log.append("restore"))
    one = ["precheck", "A.start", "A.stop", "B.start", "B.stop"]
    assert log == ["precheck", "B.start", "B.stop", *one * 5, "precheck"]

    # the converge phase read the controller; both B rounds started with what it settled on, and got SIGTERM
    assert report["converge"]["converged"] is True and report["converge"]["knobs"] == {"parallel": 2}
    assert report["converge"]["limit"] == 3 and report["converge"]["load_rounds"] == 1
    events = [json.loads(line) for line in (arm_b.state_dir / "fake-daemon.log").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "sigterm"] * 6
    assert "parallel" not in events[0]["worker"]
    assert [e["worker"]["parallel"] for e in events[2::2]] == [2] * 5
    assert all(e["gateway"]["limit"] == 3 for e in events[2::2])
    assert arm_b.proc is None

    out = io.StringIO()
    write_outputs(report, args, out)
    data = json.loads(out.getvalue())
    assert data == json.loads((tmp_path / "c.json").read_text())
    assert set(data) >= {"spec", "arms", "converge", "order", "rounds", "ratios", "host_restored"}
    assert [(r["arm"], r["round"]) for r in data["rounds"]] == [(arm, n) for n in range(1, 6) for arm in "AB"]
    for r in data["rounds"]:
        assert r["ok"] > 0 and r["error_count"] == 0 and r["tokens_per_s"] > 0
        assert set(r["ttft_s"]) == {"p50", "p95", "p99"} and set(r["itl_s"]) == {"p50", "p95", "p99"}
        assert r["goodput_requests_per_s"] <= r["requests_per_s"]
    assert data["rounds"][1]["arm_state"]["knobs"] == {"parallel": 2}
    assert data["rounds"][0]["arm_state"]["requests"] >= data["rounds"][0]["requests"]
    for key in ("goodput_requests_per_s", "goodput_tokens_per_s", "tokens_per_s"):
        ratio = data["ratios"][key]
        assert ratio["rounds_a"] == ratio["rounds_b"] == 5 and ratio["resamples"] == 2000 and ratio["paired"]
        assert ratio["low"] <= ratio["ratio"] <= ratio["high"]

    # the PNG (matplotlib comes with the test extra): rounds per arm and the ratios with their intervals
    from agent.bench.compare_plot import plot_compare

    png = tmp_path / "c.png"
    assert plot_compare(data, png) is None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_refuses_bad_compare_arguments_before_touching_anything(tmp_path: Path) -> None:
    import subprocess

    for extra, field in ((["--rounds", "1"], "--rounds"), (["--scenario", "nope"], "--scenario"),
                         (["--concurrency", "1,2"], "--concurrency"), (["--resamples", "10"], "--resamples")):
        r = subprocess.run([sys.executable, "-m", "agent", "bench", "--compare", *extra], capture_output=True,
                           text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 2 and r.stderr.startswith(f"hosttune: error: {field}: "), r.stderr
