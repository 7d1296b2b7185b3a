"""The gateway in front of the real llama-server with the bundled model: pass-through with measured TTFT/ITL,
and a worker killed (SIGKILL) and restarted under a steady load loses no request."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from agent.bench.llama_local import LocalLlamaServer
from agent.gateway.app import Gateway, create_app
from agent.gateway.settings import GatewaySettings
from agent.gateway.upstream import ProbedUpstream
from tests.support.gateway_fakes import ServedApp

pytestmark = [pytest.mark.engine, pytest.mark.slow]
ENGINE_ARGS = ["-np", "2", "-c", "2048"]


@pytest.fixture
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLlamaServer]:
    from agent.model_files import default_model_path

    log = tmp_path_factory.mktemp("llama") / "llama-server.log"
    server = LocalLlamaServer(default_model_path(), threads=2, extra_args=ENGINE_ARGS, log_path=log)
    server.start(timeout_s=180)
    try:
        yield server
    finally:
        server.stop()


def gateway_for(llama: LocalLlamaServer, **settings: object) -> tuple[ServedApp, Gateway, ProbedUpstream]:
    endpoint = ProbedUpstream(llama.url, healthy_every_s=0.5, unhealthy_every_s=0.1)
    app, gw = create_app(endpoint, GatewaySettings(**settings))  # type: ignore[arg-type]
    return ServedApp(app), gw, endpoint


def wait_ready(endpoint: ProbedUpstream, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not endpoint.is_ready():
        assert time.monotonic() < deadline, "gateway never saw the worker ready"
        time.sleep(0.05)


def test_streaming_and_non_streaming_pass_through_with_measurements(llama: LocalLlamaServer) -> None:
    served, gw, endpoint = gateway_for(llama)
    with served, httpx.Client(timeout=120) as c:
        wait_ready(endpoint)
        body = {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 24,
                "ignore_eos": True}
        r = c.post(served.url + "/v1/chat/completions", json={**body, "stream": True})
        assert r.status_code == 200
        events = [json.loads(b[6:]) for b in r.text.split("\n\n") if b.startswith("data: {")]
        content = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
        assert r.text.rstrip().endswith("data: [DONE]")
        n = c.post(served.url + "/v1/chat/completions", json=body)
        assert n.status_code == 200 and n.json()["usage"]["completion_tokens"] == 24
        raw = c.post(served.url + "/completion", json={"prompt": "Once upon a time", "n_predict": 16,
                                                       "ignore_eos": True, "stream": True})
        assert raw.status_code == 200
        deadline = time.monotonic() + 5
        while len(gw.stats.recent) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        streamed, plain, llamacpp = list(gw.stats.recent)[-3:]
    assert streamed.outcome == plain.outcome == llamacpp.outcome == "ok"
    # streamed: the engine's own count (timings) equals what it generated; one ITL per gap between chunks
    assert streamed.tokens_out == 24 and streamed.tokens_source in ("usage", "timings")
    assert streamed.content_chunks == len(content) and len(streamed.itl_s) == len(content) - 1
    assert streamed.ttft_s is not None and streamed.e2e_s is not None
    assert 0 < streamed.ttft_s < streamed.e2e_s
    assert all(g >= 0 for g in streamed.itl_s) and sum(streamed.itl_s) <= streamed.e2e_s - streamed.ttft_s + 1e-6
    assert streamed.tokens_in is not None and streamed.tokens_in > 5
    assert plain.tokens_out == 24 and plain.tokens_source == "usage" and plain.itl_s == []
    assert llamacpp.tokens_out == 16 and llamacpp.tokens_source in ("llamacpp", "timings")
    assert len(llamacpp.itl_s) == 15


def until(cond: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached (machine too loaded?)"
        time.sleep(0.05)


def test_worker_kill_and_restart_under_load_loses_no_request(llama: LocalLlamaServer) -> None:
    """Two clients send non-streamed requests back to back; the worker is SIGKILLed mid-load and restarted on
    the same port 1 s later. Every request must complete (held or retried once before its first byte) or get a
    503 with Retry-After; none may fail otherwise."""
    served, gw, endpoint = gateway_for(llama, limit=2, queue_timeout_s=60)
    outcomes: list[tuple[int, str | None, int | None]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=120) as c:
            while not stop.is_set():
                r = c.post(served.url + "/v1/completions",
                           json={"prompt": "The quick brown fox", "max_tokens": 24, "ignore_eos": True})
                usage = r.json().get("usage", {}) if r.status_code == 200 else {}
                outcomes.append((r.status_code, r.headers.get("retry-after"), usage.get("completion_tokens")))

    with served:
        wait_ready(endpoint)
        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        until(lambda: len(outcomes) >= 2 and gw.gate.in_flight >= 1)  # steady load, requests in flight
        before = len(outcomes)
        in_flight_at_kill = gw.gate.in_flight
        llama.kill()
        time.sleep(1.0)
        llama.start(timeout_s=180)
        until(lambda: len(outcomes) >= before + in_flight_at_kill + 2)  # the held ones and a few new ones
        stop.set()
        for t in threads:
            t.join(180)
        snap = gw.stats.sample()
    print(f"requests={len(outcomes)} before_kill={before} in_flight_at_kill={in_flight_at_kill} "
          f"outcomes={snap.outcomes} retries={snap.retries_total}")
    assert before >= 1 and len(outcomes) > before, "the load did not continue across the restart"
    assert in_flight_at_kill >= 1
    bad = [o for o in outcomes if not (o[0] == 200 and o[2] == 24) and not (o[0] == 503 and o[1])]
    assert bad == [], f"requests lost across the restart: {bad}"
    assert snap.outcomes["error"] == 0 and snap.outcomes["timeout"] == 0
    assert snap.retries_total >= 1  # the requests in flight at the kill were retried, not failed


def engine_slots_busy(llama: LocalLlamaServer) -> int:
    r = httpx.get(f"{llama.url}/slots", timeout=10)
    r.raise_for_status()
    return sum(1 for s in r.json() if s.get("is_processing"))


def stream_and_leave(url: str, leave_at: float, after_first_bytes: bool) -> None:
    """A streaming chat request on a raw socket, closed at `leave_at` (or at the first bytes of the reply)."""
    body = json.dumps({"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 400,
                       "ignore_eos": True, "stream": True}).encode()
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(body), body))
        s.settimeout(0.02)
        while time.monotonic() < leave_at:
            try:
                if s.recv(65536) and after_first_bytes:
                    return
            except TimeoutError:
                continue


def test_clients_leaving_at_random_points_leave_every_engine_slot_idle(llama: LocalLlamaServer) -> None:
    """Streaming clients that leave while queued, during prompt processing, at the first bytes or mid-stream:
    within a few seconds of the last one leaving, llama-server reports every slot idle (nothing generates for
    nobody) and the gateway holds no admission slot."""
    rng = random.Random(14)
    served, gw, endpoint = gateway_for(llama, limit=3, max_queue=32)
    with served:
        wait_ready(endpoint)
        threads = []
        for _ in range(10):
            leave_at = time.monotonic() + rng.uniform(0, 3.0)
            t = threading.Thread(target=stream_and_leave, args=(served.url, leave_at, rng.random() < 0.3))
            t.start()
            threads.append(t)
        for t in threads:
            t.join(30)
        until(lambda: engine_slots_busy(llama) == 0, timeout=10)
        until(lambda: gw.gate.in_flight == 0 and gw.gate.queued == 0, timeout=10)
        aborted = gw.stats.sample().outcomes.get("client_abort", 0)
    assert aborted >= 1
