"""Slot affinity and prompt caching: what the gateway adds to a completion request's body for llama-server.

llama-server keeps each slot's last prompt in its KV cache; a request that lands on the slot holding its prefix
only processes the new tokens (`timings.cache_n` reused, `timings.prompt_n` processed). Left to itself the server
picks a slot by prompt similarity among the idle ones, so a conversation whose slot is busy, or whose prefix another
conversation's shares, is prefilled again from scratch. The gateway keeps a conversation on one slot by setting
`id_slot` (llama-server honours it on /v1/chat/completions and /completion alike; seen with llama.cpp from
llama-cpp-python 0.3.36), and sets `cache_prompt` when the policy asks and the client did not say.

The conversation key is the client's `X-Session-Id` header, or else a hash of the system prompt and the first
user message (what every turn of a chat resends). Keys are hashed (a hostile id of any length costs 16 bytes) and
the map is an LRU with a cap: a flood of new ids evicts old ones, never grows memory.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

SESSION_HEADER = "x-session-id"
MAX_SESSIONS = 4096
# What of a prompt the fallback key hashes: enough to tell conversations apart, bounded work per request.
KEY_PREFIX_CHARS = 4096


@dataclass(frozen=True)
class Shaping:
    """What the gateway does to completion bodies for the current worker (from the policy's worker section).

    slots: the worker's parallel slots (id_slot is 0..slots-1); affinity: set id_slot per conversation;
    cache_prompt: the value set when the client gives none (None: leave the body alone); slots_known: `slots` is
    the engine's real slot count (llama-server), not a placeholder for an engine whose concurrency is not a slot
    count."""

    slots: int = 1
    affinity: bool = False
    cache_prompt: bool | None = None
    slots_known: bool = False

    @property
    def active(self) -> bool:
        return (self.affinity and self.slots > 1) or self.cache_prompt is not None


def _text(content: object) -> str:
    """A message's text: a string, or the text parts of an OpenAI content list."""
    if isinstance(content, str):
        return content[:KEY_PREFIX_CHARS]
    if isinstance(content, list):
        parts = [p.get("text") for p in content[:16] if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))[:KEY_PREFIX_CHARS]
    return ""


def conversation_key(session_id: str | None, body: Mapping[str, object]) -> bytes | None:
    """16 bytes naming the conversation, or None when the request gives nothing to key on."""
    if session_id:
        return hashlib.blake2b(b"s\0" + session_id.encode("utf-8", "replace"), digest_size=16).digest()
    messages = body.get("messages")
    if isinstance(messages, list):
        system = next((m for m in messages[:8] if isinstance(m, dict) and m.get("role") == "system"), None)
        user = next((m for m in messages[:8] if isinstance(m, dict) and m.get("role") == "user"), None)
        if user is None:
            return None
        seed = json.dumps([_text(system.get("content")) if system else "", _text(user.get("content"))])
    elif isinstance(prompt := body.get("prompt"), str) and prompt:
        seed = prompt[:KEY_PREFIX_CHARS]
    else:
        return None
    return hashlib.blake2b(b"p\0" + seed.encode("utf-8", "replace"), digest_size=16).digest()


class SlotMap:
    """Conversation key -> slot, least-loaded assignment, LRU-bounded.

    A new conversation takes the slot with the fewest requests in flight, then the fewest conversations mapped
    to it; a known one keeps its slot. A key guessed from the opening messages (no session id: `sticky` false)
    moves when its slot is busy and another has fewer requests in flight: that is most likely another user
    sending the same opening. A client's own session id is sticky: its next turn can arrive before the gateway
    has counted the last reply as finished, and moving it then would throw its cached prefix away. When
    the slot count changes (the controller moved `parallel`), the map starts over: old slot ids may no longer
    exist and the engine's caches were emptied by its restart anyway."""

    def __init__(self, slots: int, cap: int = MAX_SESSIONS) -> None:
        if slots < 1 or cap < 1:
            raise ValueError("slots and cap must be at least 1")
        self.cap = cap
        self._reset(slots)

    def _reset(self, slots: int) -> None:
        self.slots = slots
        self._map: OrderedDict[bytes, int] = OrderedDict()
        self._sessions = [0] * slots
        self._in_flight = [0] * slots

    def resize(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        if slots != self.slots:
            self._reset(slots)

    def __len__(self) -> int:
        return len(self._map)

    def loads(self) -> list[tuple[int, int]]:
        """(in flight, conversations) per slot."""
        return list(zip(self._in_flight, self._sessions, strict=True))

    def slot_of(self, key: bytes) -> int | None:
        """The slot `key` is mapped to, without touching the map (None: not mapped)."""
        return self._map.get(key)

    def assign(self, key: bytes, sticky: bool = False) -> int:
        """The slot for `key` (taking one for a new key, evicting the least recently used past the cap)."""
        least = min(range(self.slots), key=lambda s: (self._in_flight[s], self._sessions[s], s))
        slot = self._map.get(key)
        if slot is not None:
            self._map.move_to_end(key)
            if sticky or self._in_flight[slot] == 0 or self._in_flight[least] >= self._in_flight[slot]:
                return slot
            # Its slot is busy: a chat client waits for its reply, so this is not the next turn of the request in
            # flight but another user sending the same opening ("Hello"): pinning it would queue it behind that
            # one while a slot idles. It moves, and the conversation follows it.
            self._sessions[slot] -= 1
        slot = self._map[key] = least
        self._sessions[slot] += 1
        while len(self._map) > self.cap:
            _, old = self._map.popitem(last=False)
            self._sessions[old] -= 1
        return slot

    def begin(self, slot: int) -> None:
        if 0 <= slot < self.slots:
            self._in_flight[slot] += 1

    def end(self, slot: int) -> None:
        if 0 <= slot < self.slots and self._in_flight[slot] > 0:
            self._in_flight[slot] -= 1


@dataclass(frozen=True)
class Rewritten:
    body: bytes
    slot: int | None  # the slot the gateway chose (None: it chose none)


def rewrite(body: bytes, session_id: str | None, shaping: Shaping, slots: SlotMap | None) -> Rewritten:
    """The body to send to the worker. Values the client set (id_slot, cache_prompt) are kept; a body that is not
    a JSON object is passed on untouched (the worker answers it)."""
    if not shaping.active:
        return Rewritten(body, None)
    try:
        payload = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Rewritten(body, None)
    if not isinstance(payload, dict):
        return Rewritten(body, None)
    changed = False
    if shaping.cache_prompt is not None and "cache_prompt" not in payload:
        payload["cache_prompt"] = shaping.cache_prompt
        changed = True
    slot = None
    if shaping.affinity and slots is not None and slots.slots > 1 and "id_slot" not in payload:
        key = conversation_key(session_id, payload)
        if key is not None:
            slot = slots.assign(key, sticky=bool(session_id))
            payload["id_slot"] = slot
            changed = True
    if not changed:
        return Rewritten(body, None)
    return Rewritten(json.dumps(payload, ensure_ascii=False).encode(), slot)
