"""`hosttune bench` against a real local worker (the fake llama-server-shaped HTTP server): closed and open loop,
error accounting, report figures, the CLI (JSON, --out, --plot), and the sweep over a fake worker control."""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.bench.client import RequestResult, build_body
from agent.bench.corpus import MixSpec, make_request, parse_mix
from agent.bench.load import Bounds, LevelRun, Target
from agent.bench.report import summarize_level
from agent.bench.runner import bench
from agent.bench.sweep import best_point, parse_grid, run_sweep
from agent.errors import InputError
from agent.gateway.app import create_app
from agent.gateway.settings import GatewaySettings
from agent.gateway.upstream import StaticUpstream
from tests.support.gateway_fakes import FakeWorker, ServedApp

HOSTTUNE = [sys.executable, "-m", "agent"]
SMALL = MixSpec(parse_mix(None), long_prompt_words=60, max_tokens=4)


@pytest.fixture
def worker() -> Iterator[FakeWorker]:
    w = FakeWorker().start()
    yield w
    w.close()


def test_mix_weights_and_shapes() -> None:
    rng = random.Random(7)
    mix = MixSpec({"chat": 3, "summarize": 1, "generate": 0}, long_prompt_words=300)
    kinds = Counter(mix.draw(rng).kind for _ in range(2000))
    assert kinds["generate"] == 0
    assert 0.70 < kinds["chat"] / 2000 < 0.80  # 3:1 -> 75%
    s = make_request("summarize", random.Random(1), long_prompt_words=300)
    words = len(s.prompt.split())
    assert 300 * 0.75 <= words <= 300 * 1.25 + 120  # jitter, plus at most one paragraph of overshoot
    g = make_request("generate", random.Random(1))
    c = make_request("chat", random.Random(1))
    assert g.max_tokens > c.max_tokens and len(g.prompt) < len(s.prompt)
    assert MixSpec({"generate": 1}, max_tokens=8).draw(rng).max_tokens == 8


def test_parse_mix_errors_name_the_flag() -> None:
    assert parse_mix("generate") == {"generate": 1.0}
    for bad in ("poetry=1", "chat=x", "chat=-1", "chat=0"):
        with pytest.raises(InputError) as info:
            parse_mix(bad)
        assert info.value.field == "--mix"


def test_request_bodies_per_api() -> None:
    req = make_request("chat", random.Random(2))
    chat = build_body("chat", req, "m", ignore_eos=True)
    assert chat["messages"][-1] == {"role": "user", "content": req.prompt} and chat["stream"] is True
    assert chat["model"] == "m" and chat["ignore_eos"] is True and chat["max_tokens"] == req.max_tokens
    assert build_body("llamacpp", req, None, False)["n_predict"] == req.max_tokens
    assert req.prompt in build_body("completions", req, None, False)["prompt"]


def test_closed_loop_keeps_concurrency_and_measures(worker: FakeWorker) -> None:
    worker.state.ttft_s, worker.state.itl_s, worker.state.tokens = 0.1, 0.02, 5
    report = bench(Target(worker.url), SMALL, [2], [], Bounds(duration_s=None, requests=6), warmup=0)
    (lv,) = report["levels"]
    assert lv["requests"] == 6 and lv["ok"] == 6 and lv["errors"] == {}
    assert worker.state.max_active == 2 and worker.state.requests == 6
    assert lv["output_tokens"] == 30  # the worker's usage: 5 per request
    assert lv["tokens_per_s"] == pytest.approx(30 / lv["wall_s"])
    assert lv["ttft_s"]["p50"] >= 0.1 and lv["itl_s"]["p50"] >= 0.015
    assert lv["ttft_s"]["p50"] <= lv["ttft_s"]["p95"] <= lv["ttft_s"]["p99"]
    # 3 rounds of ~0.18 s each with 2 clients
    assert lv["wall_s"] >= 3 * (0.1 + 4 * 0.02)


def test_open_loop_does_not_wait_for_replies(worker: FakeWorker) -> None:
    worker.state.ttft_s, worker.state.tokens = 0.5, 2
    report = bench(Target(worker.url, api="completions"), SMALL, [], [20.0], Bounds(duration_s=None, requests=8),
                   warmup=0)
    (lv,) = report["levels"]
    assert lv["mode"] == "open" and lv["rate"] == 20.0 and lv["ok"] == 8
    assert worker.state.max_active >= 3  # arrivals kept coming while earlier replies were pending


def test_rejections_are_counted_with_retry_after(worker: FakeWorker) -> None:
    worker.state.ttft_s = 0.5
    app, _gw = create_app(StaticUpstream(worker.url), GatewaySettings(limit=1, max_queue=0, retry_after_s=7))
    with ServedApp(app) as served:
        report = bench(Target(served.url), SMALL, [3], [], Bounds(duration_s=None, requests=3), warmup=0)
    (lv,) = report["levels"]
    assert lv["ok"] >= 1 and lv["errors"].get("http_503", 0) >= 1
    assert lv["ok"] + lv["errors"]["http_503"] == 3
    assert lv["retry_after"] == ["7"]


def test_transport_errors_are_results_not_crashes(worker: FakeWorker) -> None:
    # a connection closed without any response is resent once (it may be a stale pooled connection), so a
    # worker that dies twice in a row before answering is an error, and one that dies once is not
    worker.state.die_next = [0] * 6
    report = bench(Target(worker.url), SMALL, [1], [], Bounds(duration_s=None, requests=3), warmup=0)
    (lv,) = report["levels"]
    assert lv["errors"] == {"transport": 3} and worker.state.requests == 6
    assert all("without sending a response" in e for e in lv["error_examples"])
    worker.state.die_next = [0]
    (lv,) = bench(Target(worker.url), SMALL, [1], [], Bounds(duration_s=None, requests=1), warmup=0)["levels"]
    assert lv["ok"] == 1 and lv["stale_connection_retries"] == 1


def test_summary_figures_from_known_results() -> None:
    results = [RequestResult("chat", start=0.0, end=1.0, ok=True, status=200, ttft_s=0.1, itl_s=[0.01, 0.03],
                             tokens_out=10),
               RequestResult("chat", start=0.5, end=2.0, ok=True, status=200, ttft_s=0.3, itl_s=[0.02],
                             tokens_out=20),
               RequestResult("generate", start=1.0, end=1.2, ok=False, status=503, error="http_503")]
    lv = summarize_level(LevelRun("closed", 2, results, wall_s=2.5))
    assert lv["tokens_per_s"] == pytest.approx(30 / 2.5) and lv["requests_per_s"] == pytest.approx(2 / 2.5)
    assert lv["errors"] == {"http_503": 1} and lv["kinds"] == {"chat": 2, "generate": 1}
    assert lv["ttft_s"]["p50"] == pytest.approx(statistics.median([0.1, 0.3]))
    assert lv["itl_s"]["p50"] == pytest.approx(0.02)
    assert lv["e2e_s"]["p50"] == pytest.approx(statistics.median([1.0, 1.5]))


def test_cli_json_out_and_plot(worker: FakeWorker, tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "p.png"
    r = subprocess.run([*HOSTTUNE, "bench", "--url", worker.url, "--concurrency", "1,2", "--requests", "3",
                        "--warmup", "0", "--max-tokens", "4", "--long-prompt-words", "50", "--json",
                        "--out", str(out), "--plot", str(png)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert json.loads(out.read_text()) == report
    assert [lv["label"] for lv in report["levels"]] == ["c=1", "c=2"]
    assert all(lv["ok"] == 3 for lv in report["levels"])
    assert "[c=2]" in r.stderr  # progress line
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plot skipped" in r.stderr
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_table_output(worker: FakeWorker) -> None:
    r = subprocess.run([*HOSTTUNE, "bench", "--url", worker.url, "--rate", "10", "--requests", "2", "--quiet",
                        "--warmup", "0", "--api", "llamacpp"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    head, row = r.stdout.splitlines()[:2]
    assert head.split()[:4] == ["level", "req", "err", "tok/s"] and row.split()[:3] == ["rate=10/s", "2", "0"]
    assert r.stderr == ""


@pytest.mark.parametrize(("args", "flag"), [
    (["--concurrency", "1,x"], "--concurrency"),
    (["--concurrency", "0"], "--concurrency"),
    (["--rate", "-1"], "--rate"),
    (["--duration", "0"], "--duration"),
    (["--mix", "poetry"], "--mix"),
    (["--sweep", "np=1;bogus=2"], "--sweep"),
])
def test_cli_bad_arguments(args: list[str], flag: str) -> None:
    r = subprocess.run([*HOSTTUNE, "bench", "--url", "http://127.0.0.1:9", *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith(f"hosttune: error: {flag}: ")


def test_cli_unreachable_url_is_one_line_exit_1() -> None:
    r = subprocess.run([*HOSTTUNE, "bench", "--url", "http://127.0.0.1:9", "--requests", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("hosttune: error: cannot reach http://127.0.0.1:9")


def test_parse_grid() -> None:
    assert parse_grid("np=1,2;ub=128,512") == [{"np": "1", "ub": "128"}, {"np": "1", "ub": "512"},
                                               {"np": "2", "ub": "128"}, {"np": "2", "ub": "512"}]
    for bad in ("", "np", "np=", "np=1;np=2", "speed=1"):
        with pytest.raises(InputError):
            parse_grid(bad)


class FakeControl:
    """Each point gets its own fake worker whose speed depends on the knob, like a real engine would."""

    def __init__(self) -> None:
        self.current: FakeWorker | None = None
        self.restarts: list[dict[str, str]] = []
        self.closed = False

    def restart_with(self, knobs: dict[str, str]) -> str:
        self.close()
        self.closed = False
        self.restarts.append(knobs)
        if knobs["np"] == "3":
            raise RuntimeError("failed to allocate KV cache")
        w = FakeWorker().start()
        np_ = int(knobs["np"])
        w.state.tokens, w.state.itl_s = 8, 0.02 / np_   # more slots: faster decode ...
        w.state.ttft_s = 0.05 * np_                      # ... but slower first token
        self.current = w
        return w.url

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None
        self.closed = True


def test_sweep_visits_every_point_survives_a_bad_one_and_respects_the_slo() -> None:
    control = FakeControl()

    def measure(url: str) -> dict[str, Any]:
        return bench(Target(url), SMALL, [2], [], Bounds(duration_s=None, requests=4), warmup=0)

    report = run_sweep(parse_grid("np=1,2,3,4"), control, measure, ttft_p95_slo_s=0.15)
    assert [p["knobs"]["np"] for p in report["points"]] == ["1", "2", "3", "4"]
    assert "KV cache" in report["points"][2]["error"] and report["points"][2]["levels"] == []
    assert control.closed
    by_np = {p["knobs"]["np"]: p["levels"][0] for p in report["points"] if p["levels"]}
    assert by_np["4"]["ttft_s"]["p95"] > 0.15           # the fastest decoder misses the TTFT SLO ...
    assert report["best"]["knobs"]["np"] in ("1", "2")   # ... so it cannot be the best point
    eligible = {k: v["tokens_per_s"] for k, v in by_np.items() if v["ttft_s"]["p95"] <= 0.15}
    assert report["best"]["tokens_per_s"] == max(eligible.values())
    assert best_point(report["points"], None)["tokens_per_s"] == max(v["tokens_per_s"] for v in by_np.values())


def test_stale_keep_alive_connections_are_not_errors(worker: FakeWorker) -> None:
    """Against a server that closes after each streamed reply without saying so (llama-server does), a request
    sent down the dead pooled connection is resent once, not reported as an error."""
    worker.state.silent_close = True
    worker.state.ttft_s = worker.state.itl_s = 0
    report = bench(Target(worker.url), SMALL, [1], [], Bounds(duration_s=None, requests=15), warmup=0)
    (lv,) = report["levels"]
    assert lv["ok"] == 15 and lv["errors"] == {}
    assert worker.state.requests == 15  # a resend only happens when the server never saw the request
