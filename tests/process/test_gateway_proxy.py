"""The gateway served by uvicorn in front of a real local fake worker (raw HTTP server with injected delays and
failures): pass-through, TTFT/ITL measurement bounds, admission, hold while not ready, one safe retry."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent.gateway.app import Gateway, create_app
from agent.gateway.settings import GatewaySettings
from agent.gateway.stats import RequestRecord
from agent.gateway.upstream import ProbedUpstream, StaticUpstream
from agent.metrics.prom import parse_text, sample_value
from tests.support.gateway_fakes import FakeWorker, ServedApp

CHAT = "/v1/chat/completions"


@pytest.fixture
def worker() -> Iterator[FakeWorker]:
    w = FakeWorker().start()
    yield w
    w.close()


def serve(endpoint: Any, **settings: Any) -> tuple[ServedApp, Gateway]:
    app, gw = create_app(endpoint, GatewaySettings(**settings))
    return ServedApp(app), gw


def chat(stream: bool, **fake: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": stream, "fake": fake}


def wait_for(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def last(gw: Gateway, n: int = 1) -> list[RequestRecord]:
    wait_for(lambda: len(gw.stats.recent) >= n)
    return list(gw.stats.recent)[-n:]


def sse_contents(text: str) -> list[str]:
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: ") and block != "data: [DONE]":
            obj = json.loads(block[6:])
            for c in obj.get("choices", []):
                if c.get("delta", {}).get("content"):
                    out.append(c["delta"]["content"])
    return out


def test_streaming_chat_passes_through_and_measures_ttft_and_itl(worker: FakeWorker) -> None:
    ttft, itl, n = 0.2, 0.05, 6
    served, gw = serve(StaticUpstream(worker.url))
    with served, httpx.Client(timeout=10) as c:
        direct = c.post(worker.url + CHAT, json=chat(True, ttft_s=0, itl_s=0, tokens=n)).text
        via = c.post(served.url + CHAT, json=chat(True, ttft_s=ttft, itl_s=itl, tokens=n))
        assert via.status_code == 200
        assert via.headers["content-type"].startswith("text/event-stream")
        assert sse_contents(via.text) == sse_contents(direct) == [f"w{i} " for i in range(n)]
        rec = last(gw)[0]
    assert rec.outcome == "ok" and rec.stream and rec.status == 200
    assert rec.ttft_s is not None and ttft <= rec.ttft_s < ttft + 1.0
    assert len(rec.itl_s) == n - 1
    # the worker wrote chunk i at >= first + i*itl, so the span of the gaps is bounded below by it
    assert sum(rec.itl_s) >= (n - 1) * itl - 0.02
    assert sorted(rec.itl_s)[len(rec.itl_s) // 2] >= itl * 0.8
    assert rec.e2e_s is not None and rec.e2e_s >= rec.ttft_s + sum(rec.itl_s) - 1e-6
    assert (rec.tokens_in, rec.tokens_out, rec.tokens_source) == (7, n, "usage")


def test_streaming_without_usage_counts_chunks(worker: FakeWorker) -> None:
    served, gw = serve(StaticUpstream(worker.url))
    with served, httpx.Client(timeout=10) as c:
        r = c.post(served.url + "/v1/completions", json={"prompt": "x", "stream": True,
                                                         "fake": {"tokens": 4, "usage": False}})
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        rec = last(gw)[0]
    assert (rec.tokens_out, rec.tokens_source, rec.content_chunks) == (4, "counted", 4)


def test_llamacpp_completion_route_streams_and_reports_tokens(worker: FakeWorker) -> None:
    served, gw = serve(StaticUpstream(worker.url))
    with served, httpx.Client(timeout=10) as c:
        r = c.post(served.url + "/completion", json={"prompt": "x", "stream": True, "fake": {"tokens": 3}})
        assert r.status_code == 200
        rec = last(gw)[0]
    assert (rec.tokens_in, rec.tokens_out, rec.tokens_source) == (7, 3, "llamacpp")
    assert len(rec.itl_s) == 2


def test_non_streaming_reply_ttft_is_first_byte(worker: FakeWorker) -> None:
    served, gw = serve(StaticUpstream(worker.url))
    with served, httpx.Client(timeout=10) as c:
        r = c.post(served.url + CHAT, json=chat(False, ttft_s=0.1, itl_s=0.02, tokens=6))
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "".join(f"w{i} " for i in range(6))
        assert int(r.headers["content-length"]) == len(r.content)
        rec = last(gw)[0]
    assert rec.outcome == "ok" and not rec.stream
    assert rec.ttft_s is not None and rec.ttft_s >= 0.1 + 5 * 0.02
    assert rec.itl_s == [] and rec.tokens_out == 6 and rec.tokens_source == "usage"


def test_admission_limit_bounds_concurrency_at_the_worker(worker: FakeWorker) -> None:
    served, gw = serve(StaticUpstream(worker.url), limit=2, max_queue=10)
    results: list[int] = []
    with served:
        def one() -> None:
            with httpx.Client(timeout=20) as c:
                results.append(c.post(served.url + CHAT, json=chat(True, ttft_s=0.4, itl_s=0, tokens=1)).status_code)
        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        recs = last(gw, 6)
    assert results == [200] * 6
    assert worker.state.max_active == 2 and worker.state.requests == 6
    # arrivals were spread by thread start-up; each later pair waited for one more 0.4 s round of service
    spread = max(r.started for r in recs) - min(r.started for r in recs)
    assert spread < 0.4, "clients did not arrive together (machine too loaded)"
    waits = sorted(r.queue_wait_s or 0.0 for r in recs)
    assert waits[1] < 0.2
    assert waits[2] >= 0.4 - spread - 0.02 and waits[4] >= 0.8 - spread - 0.02


def test_full_queue_and_queue_timeout_answer_503_with_retry_after(worker: FakeWorker) -> None:
    served, gw = serve(StaticUpstream(worker.url), limit=1, max_queue=1, queue_timeout_s=0.4, retry_after_s=3)
    statuses: dict[int, httpx.Response] = {}
    with served:
        def one(i: int, delay: float) -> None:
            time.sleep(delay)
            with httpx.Client(timeout=20) as c:
                statuses[i] = c.post(served.url + CHAT, json=chat(False, ttft_s=1.0, tokens=1))
        threads = [threading.Thread(target=one, args=(i, 0.1 * i)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        recs = {r.reject_reason: r for r in last(gw, 3) if r.outcome == "rejected"}
    assert statuses[0].status_code == 200
    for i in (1, 2):
        assert statuses[i].status_code == 503
        assert statuses[i].headers["retry-after"] == "3"
    assert set(recs) == {"queue_full", "queue_timeout"}
    # uvloop timers have 1 ms resolution: a 0.4 s timeout may be measured a fraction of a ms early
    assert recs["queue_timeout"].queue_wait_s is not None and recs["queue_timeout"].queue_wait_s >= 0.4 - 0.002
    assert recs["queue_full"].queue_wait_s is not None and recs["queue_full"].queue_wait_s < 0.4
    assert worker.state.requests == 1


def test_requests_are_held_while_the_worker_restarts(worker: FakeWorker) -> None:
    endpoint = ProbedUpstream(worker.url, healthy_every_s=0.2, unhealthy_every_s=0.05)
    served, gw = serve(endpoint, queue_timeout_s=10)
    with served, httpx.Client(timeout=20) as c:
        wait_for(endpoint.is_ready)
        worker.kill()
        endpoint.report_failure()
        assert c.get(served.url + "/health").status_code == 503
        threading.Timer(0.6, worker.start).start()
        t0 = time.monotonic()
        r = c.post(served.url + CHAT, json=chat(True, tokens=2))
        held = time.monotonic() - t0
        rec = last(gw)[0]
        assert c.get(served.url + "/health").status_code == 200
    assert r.status_code == 200 and sse_contents(r.text) == ["w0 ", "w1 "]
    assert held >= 0.5
    assert rec.outcome == "ok" and rec.queue_wait_s is not None and rec.queue_wait_s >= 0.5 - 0.002
    # the client is told it was held, and for how long; the gateway counts it
    assert 500 - 2 <= int(r.headers["x-hosttune-held-ms"]) <= held * 1000 and "x-hosttune-retried" not in r.headers
    assert rec.held_s >= 0.5 - 0.002 and gw.stats.sample().held_total == 1
    held_family = {f.name: f for f in gw.stats.families(gw.stats.sample())}["hosttune_gateway_held_total"]
    assert [x.value for x in held_family.samples] == [1.0]


def test_worker_loading_503_is_held_then_served(worker: FakeWorker) -> None:
    endpoint = ProbedUpstream(worker.url, healthy_every_s=0.2, unhealthy_every_s=0.05)
    served, gw = serve(endpoint, queue_timeout_s=10)
    with served, httpx.Client(timeout=20) as c:
        wait_for(endpoint.is_ready)
        worker.state.ready = False  # /health and completions answer 503 "Loading model"

        def ready() -> None:
            worker.state.ready = True
        threading.Timer(0.5, ready).start()
        r = c.post(served.url + CHAT, json=chat(False, tokens=2))
        rec = last(gw)[0]
    assert r.status_code == 200
    assert rec.outcome == "ok"


def test_hold_gives_up_after_the_timeout_with_retry_after(worker: FakeWorker) -> None:
    endpoint = ProbedUpstream(worker.url, unhealthy_every_s=0.05)
    worker.kill()
    served, gw = serve(endpoint, queue_timeout_s=0.5, retry_after_s=4)
    with served, httpx.Client(timeout=20) as c:
        t0 = time.monotonic()
        r = c.post(served.url + CHAT, json=chat(True))
        waited = time.monotonic() - t0
        rec = last(gw)[0]
    assert r.status_code == 503 and r.headers["retry-after"] == "4"
    assert r.json()["error"]["reason"] == "not_ready"
    assert waited >= 0.5
    assert rec.outcome == "rejected" and rec.reject_reason == "not_ready"


def test_failure_before_first_byte_is_retried_once(worker: FakeWorker) -> None:
    endpoint = ProbedUpstream(worker.url, healthy_every_s=0.2, unhealthy_every_s=0.05)
    served, gw = serve(endpoint)
    worker.state.die_next = [0]  # the first request dies during "prompt processing"
    with served, httpx.Client(timeout=20) as c:
        wait_for(endpoint.is_ready)
        r = c.post(served.url + CHAT, json=chat(True, tokens=3))
        rec = last(gw)[0]
    assert r.status_code == 200 and sse_contents(r.text) == ["w0 ", "w1 ", "w2 "]
    assert worker.state.requests == 2
    assert rec.retried and rec.outcome == "ok"
    assert r.headers["x-hosttune-retried"] == "1" and "x-hosttune-held-ms" in r.headers
    assert gw.stats.sample().retries_total == 1


def test_second_failure_before_first_byte_is_not_retried_again(worker: FakeWorker) -> None:
    endpoint = ProbedUpstream(worker.url, healthy_every_s=0.2, unhealthy_every_s=0.05)
    served, gw = serve(endpoint)
    worker.state.die_next = [0, 0]
    with served, httpx.Client(timeout=20) as c:
        wait_for(endpoint.is_ready)
        r = c.post(served.url + CHAT, json=chat(False))
        rec = last(gw)[0]
    # nothing was generated for it: the client may send it again as it is (503 + Retry-After, not 502)
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert "worker failed before replying" in r.json()["error"]["message"]
    assert worker.state.requests == 2
    assert rec.outcome == "error" and rec.retried


def test_failure_after_bytes_reached_the_client_is_never_retried(worker: FakeWorker) -> None:
    endpoint = ProbedUpstream(worker.url, healthy_every_s=0.2, unhealthy_every_s=0.05)
    served, gw = serve(endpoint)
    worker.state.die_next = [2]  # two content chunks, then the worker dies
    got: list[bytes] = []
    with served, httpx.Client(timeout=20) as c:
        wait_for(endpoint.is_ready)
        with pytest.raises(httpx.HTTPError), c.stream("POST", served.url + CHAT, json=chat(True, tokens=5)) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                got.append(chunk)
        rec = last(gw)[0]
    text = b"".join(got).decode()
    assert sse_contents(text.split('data: {"error"')[0]) == ["w0 ", "w1 "]
    assert '"error"' in text and "[DONE]" not in text
    assert worker.state.requests == 1
    assert rec.outcome == "error" and not rec.retried


def test_client_abort_is_recorded_and_the_worker_connection_closed(worker: FakeWorker) -> None:
    served, gw = serve(StaticUpstream(worker.url))
    with served, httpx.Client(timeout=20) as c:
        with c.stream("POST", served.url + CHAT, json=chat(True, tokens=200, itl_s=0.02)) as r:
            for i, _ in enumerate(r.iter_raw()):
                if i >= 2:
                    break
        rec = last(gw)[0]
        wait_for(lambda: worker.state.active == 0)
    assert rec.outcome == "client_abort"
    assert worker.state.disconnects == 1  # the worker stopped generating, it did not run to 200 tokens
    assert worker.state.predicted_tokens_total < 200


def test_client_leaving_the_queue_frees_its_place(worker: FakeWorker) -> None:
    served, gw = serve(StaticUpstream(worker.url), limit=1, max_queue=5)
    with served:
        def long() -> None:
            with httpx.Client(timeout=20) as c:
                c.post(served.url + CHAT, json=chat(False, ttft_s=0.8, tokens=1))
        t = threading.Thread(target=long)
        t.start()
        wait_for(lambda: gw.gate.in_flight == 1)
        with httpx.Client(timeout=0.2) as c, pytest.raises(httpx.ReadTimeout):
            c.post(served.url + CHAT, json=chat(False))
        wait_for(lambda: gw.gate.queued == 0, timeout=2)
        t.join()
        recs = last(gw, 2)
    assert {r.outcome for r in recs} == {"ok", "client_abort"}
    assert worker.state.requests == 1


def test_set_limit_at_run_time_changes_worker_concurrency(worker: FakeWorker) -> None:
    served, gw = serve(StaticUpstream(worker.url), limit=1, max_queue=20)
    with served:
        gw.set_limit(3)  # from this (non-loop) thread, as the controller would
        threads = [threading.Thread(target=lambda: httpx.post(served.url + CHAT, json=chat(False, ttft_s=0.3),
                                                             timeout=20)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert worker.state.max_active == 3


def test_metrics_health_models_and_stats_endpoints(worker: FakeWorker) -> None:
    served, gw = serve(StaticUpstream(worker.url), limit=3)
    with served, httpx.Client(timeout=10) as c:
        for _ in range(3):
            c.post(served.url + CHAT, json=chat(True, tokens=4))
        last(gw, 3)
        models = c.get(served.url + "/v1/models")
        assert models.status_code == 200 and models.json()["data"][0]["id"] == "fake-model"
        health = c.get(served.url + "/health").json()
        assert health["worker_ready"] is True and health["limit"] == 3
        text = c.get(served.url + "/metrics")
        stats = c.get(served.url + "/gateway/stats").json()
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = parse_text(text.text)
    assert fams["hosttune_gateway_ttft_seconds"].type == "histogram"
    assert sample_value(fams, "hosttune_gateway_ttft_seconds_count") == 3
    assert sample_value(fams, "hosttune_gateway_ttft_seconds_bucket", {"le": "+Inf"}) == 3
    assert sample_value(fams, "hosttune_gateway_requests_total", {"outcome": "ok"}) == 3
    assert sample_value(fams, "hosttune_gateway_completion_tokens_total") == 12
    assert sample_value(fams, "hosttune_gateway_admission_limit") == 3
    assert stats["outcomes"]["ok"] == 3 and stats["ttft"]["count"] == 3 and stats["itl"]["count"] == 9
    assert 0 < stats["ttft"]["p50"] <= stats["ttft"]["p99"]  # the windowed quantiles stay in the JSON


def test_streamed_requests_land_in_the_buckets_of_their_measured_times(worker: FakeWorker) -> None:
    """Through a stub worker: every observation the gateway recorded for a request is in the buckets whose bound
    is at or above it, and only there; the worker's 0.35 s before the first token keeps TTFT out of le=0.3."""
    served, gw = serve(StaticUpstream(worker.url))
    with served, httpx.Client(timeout=10) as c:
        for _ in range(2):
            assert c.post(served.url + CHAT, json=chat(True, ttft_s=0.35, itl_s=0.02, tokens=5)).status_code == 200
        recs = last(gw, 2)
        fams = parse_text(c.get(served.url + "/metrics").text)
    seen = {"ttft": [r.ttft_s for r in recs], "itl": [g for r in recs for g in r.itl_s],
            "request_duration": [r.e2e_s for r in recs], "queue_wait": [r.queue_wait_s for r in recs]}
    assert len(seen["itl"]) == 8
    for name, values in seen.items():
        family = fams[f"hosttune_gateway_{name}_seconds"]
        buckets = [(s.labels["le"], s.value) for s in family.samples if s.name.endswith("_bucket")]
        for le, count in buckets:
            assert count == sum(1 for v in values if v is not None and v <= float(le)), (name, le)
        assert sample_value(fams, f"hosttune_gateway_{name}_seconds_sum") == pytest.approx(
            sum(v for v in values if v is not None))
    assert sample_value(fams, "hosttune_gateway_ttft_seconds_bucket", {"le": "0.3"}) == 0


def test_retry_waits_for_the_worker_to_answer_even_if_the_provider_still_says_ready(worker: FakeWorker) -> None:
    """A supervisor notices a dead worker a little late; the retry must not be spent on the corpse."""
    served, gw = serve(StaticUpstream(worker.url), queue_timeout_s=10)  # always "ready"
    with served, httpx.Client(timeout=20) as c:
        threading.Timer(0.1, worker.kill).start()      # dies during the 0.3 s "prompt processing"
        threading.Timer(0.7, worker.start).start()     # and is back 0.6 s later
        t0 = time.monotonic()
        r = c.post(served.url + CHAT, json=chat(False, ttft_s=0.3, tokens=2))
        took = time.monotonic() - t0
        rec = last(gw)[0]
    assert r.status_code == 200 and rec.outcome == "ok" and rec.retried
    assert took >= 0.6


class FakeSupervisor:
    def __init__(self, url: str) -> None:
        self.base_url: str | None = url + "/"
        self.state = "starting"
        self.pid: int | None = 4242


def test_supervised_worker_adapter() -> None:
    from agent.gateway.upstream import SupervisedWorker, WorkerEndpoint

    sup = FakeSupervisor("http://127.0.0.1:1")
    ep = SupervisedWorker(sup)
    assert isinstance(ep, WorkerEndpoint)
    assert ep.base_url() == "http://127.0.0.1:1" and not ep.is_ready() and ep.pid() == 4242
    sup.state = "ready"
    assert ep.is_ready()
    sup.base_url, sup.pid = None, None
    assert ep.base_url() is None and ep.pid() is None


def test_oversized_body_is_refused_before_reaching_the_worker(worker: FakeWorker) -> None:
    served, _gw = serve(StaticUpstream(worker.url), max_body_bytes=4096)
    with served, httpx.Client(timeout=10) as c:
        big = {"prompt": "x" * 5000, "stream": False}
        r = c.post(served.url + "/v1/completions", json=big)
        assert r.status_code == 413 and "larger than 4096" in r.json()["error"]["message"]

        def chunks() -> Iterator[bytes]:  # no content-length: the cap applies while reading
            yield json.dumps(big).encode()
        r2 = c.post(served.url + "/v1/completions", content=chunks())
        assert r2.status_code == 413
        ok = c.post(served.url + "/v1/completions", json={"prompt": "x", "fake": {"tokens": 1}})
        assert ok.status_code == 200
    assert worker.state.requests == 1


def test_streamed_requests_do_not_reuse_a_connection_the_worker_closes(worker: FakeWorker) -> None:
    """llama-server closes the connection after a streamed reply without a Connection: close header; the
    gateway must not send the next request down that dead pooled connection (it would count as a worker
    failure and a retry)."""
    worker.state.silent_close = True
    served, gw = serve(StaticUpstream(worker.url))
    with served, httpx.Client(timeout=10) as c:
        for _ in range(10):
            assert c.post(served.url + CHAT, json=chat(True, tokens=2, ttft_s=0, itl_s=0)).status_code == 200
        recs = last(gw, 10)
    assert all(h.get("connection") == "close" for h in worker.state.headers)
    assert all(r.outcome == "ok" and not r.retried for r in recs)
    assert worker.state.requests == 10
