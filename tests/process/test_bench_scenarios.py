"""`hosttune bench --scenario` and `--requests FILE.jsonl` against the fake llama-server-shaped HTTP server: each
scenario runs and is recorded; multi-turn turns resend the replies the server really sent, under one
X-Session-Id per conversation; a requests file is replayed (at its own times) and a bad one sends nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.bench.load import Target
from agent.bench.scenarios import SCENARIOS, run_requests_file, run_scenario
from tests.support.gateway_fakes import FakeWorker

HOSTTUNE = [sys.executable, "-m", "agent"]


@pytest.fixture
def worker() -> Iterator[FakeWorker]:
    w = FakeWorker().start()
    w.state.tag_replies = True
    w.state.ttft_s, w.state.itl_s, w.state.tokens = 0.005, 0.002, 4
    yield w
    w.close()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_scenario_runs_briefly(worker: FakeWorker, name: str) -> None:
    run = run_scenario(Target(worker.url), name, seed=2, duration_s=1.0, rate=20.0 if name == "burst" else None)
    assert run.scenario == name and run.seed == 2
    assert run.results and all(r.ok and r.tokens_out == 4 for r in run.results)
    assert len(run.results) == len(worker.state.bodies)
    assert run.wall_s >= 1.0
    assert all(r.tokens_in_est and r.tokens_in_est > 0 for r in run.results)
    if name == "burst":
        assert run.mode == "open" and run.value == 20.0
        early = sum(1 for r in run.results if r.start < 1 / 3)
        assert early > len(run.results) - early           # 40/s for the first third, 10/s after
    if name == "rag":
        assert all(1500 <= (r.tokens_in_est or 0) <= 3000 for r in run.results)


def test_multiturn_turns_carry_the_previous_replies(worker: FakeWorker) -> None:
    run = run_scenario(Target(worker.url), "multiturn", seed=4, duration_s=1.5, concurrency=3)
    assert run.mode == "closed" and run.value == 3
    sent = list(zip(worker.state.headers, worker.state.bodies, strict=True))
    by_session: dict[str, list[list[dict[str, str]]]] = defaultdict(list)
    for headers, body in sent:
        by_session[headers["x-session-id"]].append(body["messages"])
    assert len(by_session) >= 3
    replies = {r.text for r in run.results}
    assert all(t and t.startswith("r") for t in replies)      # tagged replies, one per request
    finished = 0
    for turns in by_session.values():
        for k, messages in enumerate(turns):
            assert len(messages) == 2 + 2 * k
            assert messages[0]["role"] == "system"
            if k:
                previous = turns[k - 1]
                assert messages[:len(previous)] == previous      # the history is resent unchanged ...
                reply = messages[len(previous)]
                assert reply["role"] == "assistant" and reply["content"] in replies   # ... with the reply got
        finished += len(turns) >= 4
    assert finished >= 1
    assert {r.session for r in run.results} == set(by_session)


def test_a_requests_file_is_replayed_at_its_times_with_sessions(worker: FakeWorker, tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [{"prompt": f"q{i}", "max_tokens": 3, "session": f"s{i % 2}", "at_s": 0.1 * i} for i in range(6)]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    run = run_requests_file(Target(worker.url, api="llamacpp"), path)
    assert run.label == "requests-file at_s" and len(run.results) == 6 and all(r.ok for r in run.results)
    assert sorted(r.start for r in run.results)[-1] >= 0.45
    assert [h["x-session-id"] for h in worker.state.headers] == ["s0", "s1"] * 3
    assert [b["prompt"].strip() for b in worker.state.bodies] == [f"q{i}" for i in range(6)]
    closed = run_requests_file(Target(worker.url), _untimed(path), concurrency=2)
    assert closed.mode == "closed" and len(closed.results) == 6
    poisson = run_requests_file(Target(worker.url), _untimed(path), rate=50.0, seed=3)
    assert poisson.mode == "open" and poisson.label == "requests-file rate=50/s"
    assert len(poisson.results) == 6 and all(r.ok for r in poisson.results)


def _untimed(path: Path) -> Path:
    out = path.with_name("untimed.jsonl")
    out.write_text("".join(json.dumps({k: v for k, v in json.loads(ln).items() if k != "at_s"}) + "\n"
                           for ln in path.read_text().splitlines()))
    return out


def test_cli_scenario_json_has_scenario_seed_and_goodput(worker: FakeWorker) -> None:
    r = subprocess.run([*HOSTTUNE, "bench", "--url", worker.url, "--scenario", "chat", "--concurrency", "2",
                        "--duration", "1", "--seed", "9", "--warmup", "1", "--slo-ttft-ms", "1000",
                        "--slo-itl-ms", "100", "--json", "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["scenario"]["name"] == "chat" and report["seed"] == 9
    (lv,) = report["levels"]
    assert lv["scenario"] == "chat" and lv["seed"] == 9 and lv["label"] == "chat c=2"
    good = lv["goodput"]
    assert good["total"] == lv["requests"] and 0 < good["met"] <= good["total"]
    assert good["ttft_slo_s"] == 1.0 and good["itl_slo_s"] == 0.1
    assert lv["prompt_tokens_est"] > 0


def test_cli_table_with_a_requests_file(worker: FakeWorker, tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "hello", "max_tokens": 2}\n' * 3)
    r = subprocess.run([*HOSTTUNE, "bench", "--url", worker.url, "--requests", str(path), "--quiet",
                        "--warmup", "0", "--slo-ttft-ms", "1000"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    head, row = r.stdout.splitlines()[:2]
    assert "slo" in head and row.split()[:4] == ["requests-file", "c=4", "3", "0"]


def test_cli_bad_requests_file_sends_nothing(worker: FakeWorker, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "max_tokens": 2}\n{"prompt": "x", "max_tokens": -1}\n')
    r = subprocess.run([*HOSTTUNE, "bench", "--url", worker.url, "--requests", str(path), "--warmup", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith(f"hosttune: error: {path}:2: --requests: max_tokens: ")
    assert worker.state.requests == 0 and worker.state.paths == []


@pytest.mark.parametrize(("args", "flag"), [
    (["--scenario", "poetry"], "--scenario"),
    (["--scenario", "burst", "--concurrency", "2"], "--concurrency"),
    (["--scenario", "multiturn", "--rate", "1"], "--rate"),
    (["--scenario", "chat", "--mix", "chat"], "--mix"),
    (["--slo-ttft-ms", "0"], "--slo-ttft-ms"),
])
def test_cli_bad_scenario_arguments(args: list[str], flag: str) -> None:
    r = subprocess.run([*HOSTTUNE, "bench", "--url", "http://127.0.0.1:9", *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith(f"hosttune: error: {flag}: "), r.stderr
