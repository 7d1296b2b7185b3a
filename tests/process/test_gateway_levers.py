"""The gateway's request levers served by uvicorn in front of the fake worker: the body the worker gets carries
id_slot (one slot per conversation) and cache_prompt, and under overload a request whose predicted wait exceeds
the TTFT budget is refused at once with 503 + Retry-After."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent.gateway.affinity import Shaping
from agent.gateway.app import create_app
from agent.gateway.settings import GatewaySettings
from agent.gateway.shedding import MIN_SAMPLES
from agent.gateway.upstream import StaticUpstream
from tests.support.gateway_fakes import FakeWorker, ServedApp, fake_worker

CHAT = "/v1/chat/completions"


@pytest.fixture
def worker() -> Iterator[FakeWorker]:
    with fake_worker() as w:
        yield w


def turn(*users: str, **fake: float) -> dict[str, object]:
    return {"messages": [{"role": "system", "content": "sys"}, *({"role": "user", "content": u} for u in users)],
            "max_tokens": 4, "fake": {"tokens": 1, **fake}}


def test_each_conversation_stays_on_its_slot_and_client_values_win(worker: FakeWorker) -> None:
    app, gw = create_app(StaticUpstream(worker.url), GatewaySettings())
    gw.configure_worker(Shaping(slots=2, affinity=True, cache_prompt=True), None)
    with ServedApp(app) as served, httpx.Client(timeout=10) as c:
        for sid in ("a", "b", "a", "b", "a"):
            assert c.post(served.url + CHAT, json=turn("hi"), headers={"X-Session-Id": sid}).status_code == 200
        # no header: the system prompt + first user message name the conversation, whatever turn it is
        c.post(served.url + CHAT, json=turn("open", "more"))
        c.post(served.url + CHAT, json=turn("open", "more", "again"))
        c.post(served.url + CHAT, json={**turn("x"), "id_slot": 1, "cache_prompt": False},
               headers={"X-Session-Id": "a"})
    slots = [b.get("id_slot") for b in worker.state.bodies]
    assert slots[0] != slots[1] and slots[0::2][:3] == [slots[0]] * 3 and slots[1::2][:2] == [slots[1]] * 2
    assert slots[5] == slots[6] is not None
    assert all(b["cache_prompt"] is True for b in worker.state.bodies[:7])
    assert worker.state.bodies[7]["id_slot"] == 1 and worker.state.bodies[7]["cache_prompt"] is False


def test_overload_is_shed_with_retry_after(worker: FakeWorker) -> None:
    app, gw = create_app(StaticUpstream(worker.url), GatewaySettings(limit=1, max_queue=50, queue_timeout_s=20))
    gw.configure_worker(Shaping(), 0.5)
    with ServedApp(app) as served, httpx.Client(timeout=20) as c:
        for _ in range(MIN_SAMPLES):  # teach the gateway a service time of about 0.4 s
            assert c.post(served.url + CHAT, json=turn("hi", ttft_s=0.4)).status_code == 200
        replies: list[httpx.Response] = []

        def one() -> None:
            with httpx.Client(timeout=20) as cc:
                replies.append(cc.post(served.url + CHAT, json=turn("hi", ttft_s=0.4)))

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        levers = c.get(served.url + "/gateway/stats").json()["levers"]
    shed = [r for r in replies if r.status_code == 503]
    # one in service, one queued behind it waits ~0.4 s (under 0.5 s); a third would wait ~0.8 s: refused
    assert 1 <= len([r for r in replies if r.status_code == 200]) <= 3 and len(shed) >= 3
    assert all(r.json()["error"]["reason"] == "shed" and int(r.headers["retry-after"]) >= 1 for r in shed)
    assert gw.levers.shed_total == len(shed) == levers["shed_total"] and levers["shed_budget_s"] == 0.5
    assert worker.state.requests == MIN_SAMPLES + 6 - len(shed)


class HeldUpstream(StaticUpstream):
    """Ready while `ready`; when not, a request waits for readiness (and `asked` is set) until it is again."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.ready = True
        self.asked = threading.Event()

    def is_ready(self) -> bool:
        if not self.ready:
            self.asked.set()
        return self.ready


def test_a_request_held_across_a_restart_that_lowers_parallel_gets_a_slot_the_new_worker_has(
        worker: FakeWorker) -> None:
    upstream = HeldUpstream(worker.url)
    app, gw = create_app(upstream, GatewaySettings(queue_timeout_s=20))
    gw.configure_worker(Shaping(slots=4, affinity=True), None)
    with ServedApp(app) as served, httpx.Client(timeout=20) as c:
        for sid in ("a", "b", "c"):  # slots 0, 1, 2 taken: a new conversation "d" would get slot 3
            assert c.post(served.url + CHAT, json=turn("hi"), headers={"X-Session-Id": sid}).status_code == 200
        upstream.ready = False  # the controller restarts the worker with parallel=2
        replies: list[httpx.Response] = []
        held = threading.Thread(target=lambda: replies.append(
            c.post(served.url + CHAT, json=turn("hi"), headers={"X-Session-Id": "d"})))
        held.start()
        assert upstream.asked.wait(10)  # the request is waiting for the worker
        gw.configure_worker(Shaping(slots=2, affinity=True), None)
        upstream.ready = True
        held.join(20)
    assert [r.status_code for r in replies] == [200]
    assert [b.get("id_slot") for b in worker.state.bodies][:3] == [0, 1, 2]
    assert worker.state.bodies[3]["id_slot"] in (0, 1)


def slow_then_queued(app: object, gw: Any) -> tuple[list[httpx.Response], int, dict[str, Any]]:
    """A slow request (1.5 s to its first token) in flight, then a fast one arriving behind it. Returns the replies
    in the order they came, how many had come when the second request was answered, and the gateway's levers."""
    replies: list[httpx.Response] = []

    def one(ttft: float) -> None:
        with httpx.Client(timeout=20) as cc:
            replies.append(cc.post(served.url + CHAT, json=turn("hi", ttft_s=ttft)))

    with ServedApp(app) as served:
        first = threading.Thread(target=one, args=(1.5,))
        first.start()
        while gw.gate.in_flight == 0:
            threading.Event().wait(0.01)
        second = threading.Thread(target=one, args=(0.0,))
        second.start()
        second.join()
        answered = len(replies)
        first.join()
        levers = httpx.get(served.url + "/gateway/stats").json()["levers"]
    return replies, answered, levers


def test_a_request_still_queued_when_its_wait_used_up_the_budget_is_shed(worker: FakeWorker) -> None:
    # No service time learnt yet (a fresh gateway under a burst): the prediction at arrival admits everyone to the
    # queue, so only the wait itself can tell that a queued request has already missed the SLO.
    app, gw = create_app(StaticUpstream(worker.url), GatewaySettings(limit=1, max_queue=50, queue_timeout_s=20))
    gw.configure_worker(Shaping(), 0.3)
    replies, answered, _ = slow_then_queued(app, gw)
    assert answered == 1, "the queued request was answered only after the first one finished"
    late = replies[0]
    assert late.status_code == 503 and late.json()["error"]["reason"] == "shed"
    assert int(late.headers["retry-after"]) >= 1
    assert replies[1].status_code == 200 and worker.state.requests == 1 and gw.levers.shed_total == 1


def test_without_shedding_a_queued_request_waits_its_turn(worker: FakeWorker) -> None:
    app, gw = create_app(StaticUpstream(worker.url), GatewaySettings(limit=1, max_queue=50, queue_timeout_s=20))
    gw.configure_worker(Shaping(), None)
    with ServedApp(app) as served, httpx.Client(timeout=20) as c:
        replies: list[httpx.Response] = []
        first = threading.Thread(target=lambda: replies.append(c.post(served.url + CHAT,
                                                                      json=turn("hi", ttft_s=0.6))))
        first.start()
        while gw.gate.in_flight == 0:
            threading.Event().wait(0.01)
        with httpx.Client(timeout=20) as c2:
            second = c2.post(served.url + CHAT, json=turn("hi"))
        first.join()
    assert second.status_code == 200 and replies[0].status_code == 200 and gw.levers.shed_total == 0


def test_with_shedding_a_request_beyond_the_slots_waits_in_the_gateway_not_in_the_engine(worker: FakeWorker) -> None:
    # The admission limit (4) is above the engine's one slot, as after the controller raised it: without the
    # ceiling the second request would be sent on and wait inside the engine, out of shedding's sight.
    app, gw = create_app(StaticUpstream(worker.url), GatewaySettings(limit=4, max_queue=50, queue_timeout_s=20))
    gw.configure_worker(Shaping(slots=1, slots_known=True), 0.3)
    replies, _, levers = slow_then_queued(app, gw)
    assert replies[0].status_code == 503 and replies[0].json()["error"]["reason"] == "shed"
    assert replies[1].status_code == 200 and worker.state.requests == 1
    assert levers["admission_ceiling"] == 1 and gw.gate.limit == 4
