"""Slot affinity and prompt caching in the gateway: the conversation key, the bounded least-loaded slot map, and
the body the worker gets (id_slot and cache_prompt set, the client's own values kept, other bodies untouched)."""

from __future__ import annotations

import json

import pytest

from agent.gateway.affinity import Shaping, SlotMap, conversation_key, rewrite
from agent.gateway.levers import Levers, levers_for
from agent.policy.model import SloSpec, WorkerSpec

SYSTEM = {"role": "system", "content": "You are terse."}


def chat(*turns: str, system: dict[str, str] | None = SYSTEM, **extra: object) -> dict[str, object]:
    messages = ([system] if system else []) + [{"role": "user", "content": t} for t in turns]
    return {"messages": messages, **extra}


def test_conversation_key_follows_the_session_header_else_system_and_first_user_message() -> None:
    assert conversation_key("abc", chat("x")) == conversation_key("abc", chat("y"))
    assert conversation_key("abc", chat("x")) != conversation_key("abd", chat("x"))
    # every later turn of a chat resends the same opening: same key without a header
    assert conversation_key(None, chat("hello")) == conversation_key(None, chat("hello", "and then?"))
    assert conversation_key(None, chat("hello")) != conversation_key(None, chat("goodbye"))
    assert conversation_key(None, chat("hello")) != conversation_key(None, chat("hello", system=None))
    assert conversation_key(None, {"prompt": "once upon"}) == conversation_key(None, {"prompt": "once upon"})
    assert conversation_key(None, {"messages": [SYSTEM]}) is None
    assert conversation_key(None, {"prompt": 3}) is None
    assert len(conversation_key("s" * 1_000_000, {}) or b"") == 16  # a hostile id costs 16 bytes


def test_content_lists_are_keyed_by_their_text() -> None:
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}]}
    assert conversation_key(None, parts) == conversation_key(None, chat("hi", system=None))


def test_slot_map_assigns_least_loaded_and_keeps_a_conversation_on_its_slot() -> None:
    m = SlotMap(3)
    a, b, c = m.assign(b"a"), m.assign(b"b"), m.assign(b"c")
    assert sorted((a, b, c)) == [0, 1, 2]  # spread: each slot has one conversation
    m.begin(a)
    m.begin(a)
    m.begin(b)
    assert m.assign(b"d") == c  # the slot with nothing in flight
    m.begin(c)
    assert m.assign(b"b") == b  # every slot busy: a known conversation keeps its slot
    m.end(a)
    m.end(a)
    m.end(a)  # one too many is ignored, never negative
    assert m.loads()[a][0] == 0 and m.loads()[b][0] == 1
    assert m.assign(b"a") == a  # its slot is idle again: it stays


def test_a_conversation_whose_slot_is_busy_moves_to_an_idle_one() -> None:
    """Many users sending the same opening share a key: they must not queue behind each other on one slot."""
    m = SlotMap(2)
    first = m.assign(b"hello")
    m.begin(first)
    second = m.assign(b"hello")
    assert second != first
    assert m.assign(b"hello") == second  # the conversation followed it
    assert sorted(sessions for _, sessions in m.loads()) == [0, 1]


def test_a_session_id_stays_on_its_slot_even_while_the_slot_looks_busy() -> None:
    """A client's next turn can arrive before the gateway counted its last reply as finished: a conversation named
    by its session id keeps its slot (and its cached prefix) anyway; slot_of reads the map without moving it."""
    m = SlotMap(2)
    first = m.assign(b"session", sticky=True)
    m.begin(first)
    assert m.assign(b"session", sticky=True) == first
    assert m.slot_of(b"session") == first and m.slot_of(b"unknown") is None
    assert m.loads()[first] == (1, 1)


def test_the_gateway_pins_a_session_header_but_moves_a_guessed_key_off_a_busy_slot() -> None:
    shaping = Shaping(slots=2, affinity=True)
    m = SlotMap(2)
    body = json.dumps({"messages": [{"role": "user", "content": "Hello"}]}).encode()
    pinned = rewrite(body, "s-1", shaping, m).slot
    assert pinned is not None
    m.begin(pinned)
    assert rewrite(body, "s-1", shaping, m).slot == pinned
    guessed = rewrite(body, None, shaping, m).slot
    assert guessed is not None
    m.begin(guessed)
    m.end(pinned)  # the session's slot is idle now, the guessed key's slot busy
    assert rewrite(body, None, shaping, m).slot == pinned  # same opening, another user: not queued behind it
    m.begin(pinned)
    m.end(guessed)  # and the other way round: the session keeps its slot while it is busy
    assert rewrite(body, "s-1", shaping, m).slot == pinned


def test_slot_map_is_bounded_lru() -> None:
    m = SlotMap(2, cap=3)
    for k in (b"1", b"2", b"3"):
        m.assign(k)
    m.assign(b"1")  # touch: "2" is now the oldest
    m.assign(b"4")
    assert len(m) == 3
    assert sum(sessions for _, sessions in m.loads()) == 3
    for i in range(10_000):  # a flood of fresh ids never grows the map past its cap
        m.assign(str(i).encode())
    assert len(m) == 3 and sum(s for _, s in m.loads()) == 3


def test_slot_map_starts_over_when_the_slot_count_changes() -> None:
    m = SlotMap(4)
    m.assign(b"a")
    m.resize(4)
    assert len(m) == 1
    m.resize(2)
    assert len(m) == 0 and m.slots == 2 and all(m.assign(str(i).encode()) < 2 for i in range(5))
    with pytest.raises(ValueError):
        m.resize(0)


def test_rewrite_sets_id_slot_and_cache_prompt() -> None:
    m = SlotMap(4)
    out = rewrite(json.dumps(chat("hi")).encode(), "sess-1", Shaping(slots=4, affinity=True, cache_prompt=True), m)
    body = json.loads(out.body)
    assert out.slot is not None and 0 <= out.slot < 4
    assert body["cache_prompt"] is True and body["id_slot"] == out.slot
    again = rewrite(json.dumps(chat("hi", "more")).encode(), "sess-1", Shaping(slots=4, affinity=True), m)
    assert again.slot == out.slot and "cache_prompt" not in json.loads(again.body)


def test_rewrite_keeps_the_clients_values() -> None:
    m = SlotMap(4)
    raw = json.dumps(chat("hi", id_slot=3, cache_prompt=False)).encode()
    out = rewrite(raw, "s", Shaping(slots=4, affinity=True, cache_prompt=True), m)
    assert out.body == raw and out.slot is None and len(m) == 0


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"text"', b"[" * 100_000])
def test_rewrite_passes_other_bodies_untouched(raw: bytes) -> None:
    out = rewrite(raw, "s", Shaping(slots=4, affinity=True, cache_prompt=True), SlotMap(4))
    assert out.body == raw and out.slot is None


def test_rewrite_is_off_when_nothing_asks_for_it() -> None:
    raw = json.dumps(chat("hi")).encode()
    assert rewrite(raw, "s", Shaping(slots=4), SlotMap(4)).body == raw
    # one slot: nothing to choose, id_slot left to the engine
    out = rewrite(raw, "s", Shaping(slots=1, affinity=True), SlotMap(1))
    assert out.body == raw and out.slot is None


def test_levers_follow_the_running_spec_and_slo() -> None:
    spec = WorkerSpec(parallel=2, slot_affinity=True, cache_prompt=True)
    slo = SloSpec(ttft_p95_ms=1500, shed=True)
    current: list[tuple[WorkerSpec | None, SloSpec | None]] = [(spec, slo)]
    lv = Levers()
    lv.follow(lambda: current[0])
    assert lv.shaping == Shaping(slots=2, affinity=True, cache_prompt=True, slots_known=True)
    assert lv.shed_budget_s == 1.5
    out = lv.rewrite(json.dumps(chat("hi")).encode(), "s")
    assert out.slot is not None and lv.slot_map.loads()[out.slot][0] == 1
    lv.done(out.slot, 0.5)
    assert lv.slot_map.loads()[out.slot][0] == 0
    current[0] = (spec.model_copy(update={"parallel": 8}), None)  # the controller moved parallel
    lv.rewrite(json.dumps(chat("hi")).encode(), "s")
    assert lv.slot_map.slots == 8 and lv.shed_budget_s is None


def test_levers_for_other_engines_leave_bodies_alone() -> None:
    shaping, budget = levers_for(WorkerSpec(engine="torch", slot_affinity=True, cache_prompt=True), None)
    assert not shaping.active and budget is None
    shaping, _ = levers_for(WorkerSpec(slot_affinity=True), None)
    assert shaping.slots == 4 and shaping.affinity  # -np unset: llama-server's auto slots
