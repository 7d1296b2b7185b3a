"""SSE framing and the content/token accounting shared by the gateway and bench."""

from __future__ import annotations

import json
from typing import Any

from agent.gateway.sse import SSEParser, StreamTally, reported_tokens


def chat_delta(content: str | None, role: bool = False) -> dict[str, Any]:
    delta: dict[str, Any] = {"content": content}
    if role:
        delta["role"] = "assistant"
    return {"choices": [{"finish_reason": None, "index": 0, "delta": delta}], "object": "chat.completion.chunk"}


def test_parser_frames_events_across_chunk_boundaries() -> None:
    p = SSEParser()
    assert p.feed(b"data: {\"a\"") == []
    assert p.feed(b":1}\r\n\r\n: keep-alive\n\nerror: {\"message\":\"boom\"}\n\ndata: [DO") == [
        ("data", b'{"a":1}'), ("error", b'{"message":"boom"}')]
    assert p.feed(b"NE]\n\n") == [("data", b"[DONE]")]


def test_tally_counts_a_real_llama_server_chat_stream() -> None:
    events = [chat_delta(None, role=True), chat_delta("I"), chat_delta("'m"), chat_delta(" here"),
              {"choices": [{"finish_reason": "length", "index": 0, "delta": {}}],
               "timings": {"cache_n": 3, "prompt_n": 29, "predicted_n": 3}}]
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    tally = StreamTally(started=0.0, stream=True)
    for i, byte_chunk in enumerate(raw[k:k + 40] for k in range(0, len(raw), 40)):
        tally.feed(byte_chunk, now=float(i))
    assert tally.content_chunks == 3 and tally.done and tally.error is None
    assert (tally.tokens_in, tally.tokens_out, tally.source) == (32, 3, "timings")
    assert tally.first_content_at is not None and len(tally.itl_s) == 2


def test_reported_tokens_precedence() -> None:
    both = {"usage": {"prompt_tokens": 7, "completion_tokens": 5}, "timings": {"prompt_n": 1, "predicted_n": 9}}
    assert reported_tokens(both) == (7, 5, "usage")
    assert reported_tokens({"tokens_predicted": 4, "tokens_evaluated": 2}) == (2, 4, "llamacpp")
    assert reported_tokens({"content": "x"}) == (None, None, None)
