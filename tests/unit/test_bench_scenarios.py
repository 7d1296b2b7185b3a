"""`hosttune bench --scenario`: the seeded workloads are reproducible byte for byte and have the shapes they
claim (shared system prompt, multi-turn histories that grow with the received replies, rag prompt lengths, burst
phase rates); the request bodies each API gets; goodput's counting."""

from __future__ import annotations

import json
import random

import pytest

from agent.bench.client import ReplyText, RequestResult, build_body
from agent.bench.corpus import BenchRequest, estimate_tokens
from agent.bench.drivers import conversation_request
from agent.bench.goodput import Goodput, goodput
from agent.bench.scenario_texts import SYSTEM_PROMPT
from agent.bench.scenarios import (
    RAG_TOKENS,
    SCENARIOS,
    Phase,
    arrival_times,
    burst_phases,
    burst_timeline,
    conversation_plan,
    request_sequence,
    spec_of,
)
from agent.errors import InputError


def _bytes(requests: list[BenchRequest]) -> bytes:
    return b"\n".join(json.dumps(build_body("chat", r, None, False), sort_keys=True).encode() +
                      (r.session or "").encode() for r in requests)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_same_seed_sends_byte_identical_requests(name: str) -> None:
    first = _bytes(request_sequence(name, 42, 60))
    assert first == _bytes(request_sequence(name, 42, 60))
    assert first != _bytes(request_sequence(name, 43, 60))


def test_burst_timeline_is_reproducible() -> None:
    a = burst_timeline(5, 2.0, 30.0)
    assert [(t, json.dumps(build_body("chat", r, None, False))) for t, r in a] == \
        [(t, json.dumps(build_body("chat", r, None, False))) for t, r in burst_timeline(5, 2.0, 30.0)]
    assert [t for t, _ in a] != [t for t, _ in burst_timeline(6, 2.0, 30.0)]
    assert [t for t, _ in a] == sorted(t for t, _ in a) and all(0 <= t < 30 for t, _ in a)


def test_unknown_scenario_names_the_flag() -> None:
    with pytest.raises(InputError) as info:
        spec_of("poetry")
    assert info.value.field == "--scenario" and "multiturn" in info.value.message


def test_chat_shares_one_system_prompt_of_a_few_hundred_tokens() -> None:
    reqs = request_sequence("chat", 1, 200)
    assert {r.system for r in reqs} == {SYSTEM_PROMPT}
    assert 200 <= estimate_tokens(SYSTEM_PROMPT) <= 600
    assert len({r.prompt for r in reqs}) >= 15              # varied questions
    assert all(estimate_tokens(r.prompt) < 40 and 40 <= r.max_tokens <= 96 for r in reqs)


def test_rag_prompts_are_1500_to_3000_tokens_with_short_answers() -> None:
    reqs = request_sequence("rag", 3, 300)
    sizes = [r.tokens_est for r in reqs]
    assert all(RAG_TOKENS[0] <= n <= RAG_TOKENS[1] for n in sizes), (min(sizes), max(sizes))
    assert max(sizes) - min(sizes) > 800                     # spread over the range, not one length
    assert all(r.max_tokens <= 64 and "[source " in r.prompt and "Question: " in r.prompt for r in reqs)


def test_multiturn_history_grows_and_carries_the_received_replies() -> None:
    conv = conversation_plan(9, 4)
    assert conv == conversation_plan(9, 4) and conv.session == "bench-9-4"
    replies = [f"reply number {i} from the server" for i in range(len(conv.user_turns))]
    previous = 0
    for turn in range(len(conv.user_turns)):
        req = conversation_request(conv, replies[:turn])
        assert req.messages is not None and req.session == conv.session
        assert len(req.messages) == 2 + 2 * turn > previous
        previous = len(req.messages)
        assert req.messages[0] == ("system", SYSTEM_PROMPT)
        assert [c for role, c in req.messages if role == "assistant"] == replies[:turn]
        assert [c for role, c in req.messages if role == "user"] == list(conv.user_turns[:turn + 1])
        assert req.max_tokens == conv.max_tokens[turn]
        body = build_body("chat", req, None, False)
        assert body["messages"][-1] == {"role": "user", "content": conv.user_turns[turn]}
    with pytest.raises(ValueError):
        conversation_request(conv, replies)


def test_multiturn_sessions_have_4_to_8_turns_and_distinct_ids() -> None:
    plans = [conversation_plan(1, i) for i in range(200)]
    assert {len(p.user_turns) for p in plans} == {4, 5, 6, 7, 8}
    assert len({p.session for p in plans}) == 200
    assert all(len(set(p.user_turns)) == len(p.user_turns) for p in plans)   # no repeated follow-up


def test_burst_phases_are_twice_then_half_the_base_rate() -> None:
    assert burst_phases(3.0, 30.0) == [Phase(0.0, 10.0, 6.0), Phase(10.0, 30.0, 1.5)]
    times = arrival_times(burst_phases(2.0, 3000.0), random.Random(1))
    first = sum(1 for t in times if t < 1000)
    second = len(times) - first
    assert abs(first / 1000 - 4.0) < 0.15 and abs(second / 2000 - 1.0) < 0.05


def test_bodies_of_a_conversation_per_api() -> None:
    req = BenchRequest("file", "sys", "q2", 7, messages=(("system", "sys"), ("user", "q1"), ("assistant", "a1"),
                                                         ("user", "q2")), session="s-1")
    chat = build_body("chat", req, "m", True)
    assert [m["content"] for m in chat["messages"]] == ["sys", "q1", "a1", "q2"]
    assert chat["model"] == "m" and chat["ignore_eos"] and chat["max_tokens"] == 7
    for api in ("completions", "llamacpp"):
        prompt = build_body(api, req, None, False)["prompt"]
        assert prompt.index("q1") < prompt.index("a1") < prompt.index("q2") and prompt.endswith("assistant: ")
    assert req.tokens_est == sum(estimate_tokens(c) for _, c in req.messages or ())


def test_reply_text_is_collected_from_each_api_shape() -> None:
    r = ReplyText()
    r.feed(b'data: {"choices":[{"delta":{"role":"assistant","content":null}}]}\n\ndata: {"choices":[{"delta":')
    r.feed(b'{"content":"Hel"}}]}\n\ndata: {"choices":[{"delta":{"content":"lo"}}]}\n\ndata: [DONE]\n\n')
    assert r.text == "Hello"
    c = ReplyText()
    c.feed(b'data: {"choices":[{"text":"a b"}]}\n\ndata: {"content":" c"}\n\ndata: not json\n\n')
    assert c.text == "a b c"
    ll = ReplyText()
    ll.feed(b'data: {"content":"x","stop":false}\n\ndata: {"content":"y","stop":true}\n\n')
    assert ll.text == "xy"


def _r(ok: bool = True, ttft: float | None = 0.1, itl: list[float] | None = None, out: int = 10) -> RequestResult:
    return RequestResult("chat", 0.0, 1.0, ok, 200 if ok else 503, None if ok else "http_503", ttft_s=ttft,
                         itl_s=itl or [], tokens_out=out)


def test_goodput_counts_requests_meeting_both_slos() -> None:
    smooth = [0.05] * 20
    stutter = [0.05] * 18 + [0.9, 0.9]          # its own p95 is high though its median is fine
    results = [_r(ttft=0.1, itl=smooth, out=21), _r(ttft=0.1, itl=stutter, out=21), _r(ttft=2.5, itl=smooth),
               _r(ok=False, out=0), _r(ttft=None), _r(ttft=0.2, itl=[], out=1)]
    g = goodput(results, 2.0, ttft_slo_s=1.0, itl_slo_s=0.1)
    assert g == Goodput(requests_per_s=1.0, tokens_per_s=11.0, met=2, total=6)
    assert goodput(results, 2.0, None, None).met == 5          # no SLO: every successful request
    assert goodput(results, 2.0, None, 0.1).met == 4           # ITL only: the slow first token passes
    assert goodput(results, 2.0, 1.0, None).met == 3
    with pytest.raises(ValueError):
        goodput(results, 0.0, None, None)
