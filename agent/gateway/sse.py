"""Reading OpenAI / llama.cpp replies as they pass: SSE framing, which events carry tokens, and token counts.

Shared by the gateway (measuring in front of the worker) and `hosttune bench` (measuring as a client), so both
count the same way:
- a *content chunk* is an SSE event that carries generated text: `choices[].delta.content` (or reasoning/tool
  calls) for chat, `choices[].text` for completions, top-level `content` for llama.cpp's /completion. The role-only
  first chat chunk and the final empty chunk are not content.
- TTFT is the time to the first content chunk; inter-token latencies are the gaps between content chunks.
- token counts come from the engine when it reports them (OpenAI `usage`, else llama.cpp `timings`, else
  /completion's `tokens_predicted`/`tokens_evaluated`), otherwise output tokens = content chunks counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SOURCE_RANK = {"usage": 3, "timings": 2, "llamacpp": 1, "counted": 0}
# The longest SSE event kept for parsing: a worker (or a server `hosttune bench` talks to) that sends an event
# without an end must not grow the buffer without bound; the bytes still pass through, the event is not counted.
MAX_EVENT_BYTES = 1 << 20


class SSEParser:
    """Incremental Server-Sent Events framing: feed bytes, get the data payload of each complete event."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """(field, data) per complete event; field is "data" or "error" (llama-server's error lines)."""
        self._buf += chunk
        if b"\r" in self._buf:
            self._buf = self._buf.replace(b"\r\n", b"\n")
        events: list[tuple[str, bytes]] = []
        while True:
            end = self._buf.find(b"\n\n")
            if end < 0:
                break
            block, self._buf = self._buf[:end], self._buf[end + 2:]
            data: list[bytes] = []
            kind = "data"
            for line in block.split(b"\n"):
                name, sep, value = line.partition(b":")
                if not sep or not name:
                    continue  # comment line (": keep-alive") or junk
                if value.startswith(b" "):
                    value = value[1:]
                if name == b"data":
                    data.append(value)
                elif name == b"error":
                    kind = "error"
                    data.append(value)
            if data:
                events.append((kind, b"\n".join(data)))
        if len(self._buf) > MAX_EVENT_BYTES:
            self._buf = self._buf[-1:]  # drop the oversized event; keep a "\n" that may start the next "\n\n"
        return events


def has_content(obj: dict[str, Any]) -> bool:
    choices = obj.get("choices")
    if isinstance(choices, list):
        for c in choices:
            if not isinstance(c, dict):
                continue
            delta = c.get("delta")
            if isinstance(delta, dict) and any(delta.get(k) for k in ("content", "reasoning_content", "tool_calls")):
                return True
            if c.get("text"):
                return True
        return False
    content = obj.get("content")
    return isinstance(content, str) and content != ""


def reported_tokens(obj: dict[str, Any]) -> tuple[int | None, int | None, str | None]:
    """(tokens in, tokens out, source) the engine reported in this JSON object, best source first."""
    usage = obj.get("usage")
    if isinstance(usage, dict) and "completion_tokens" in usage:
        return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")), "usage"
    timings = obj.get("timings")
    if isinstance(timings, dict) and "predicted_n" in timings:
        prompt = _int(timings.get("prompt_n"))
        cached = _int(timings.get("cache_n")) or 0
        return (None if prompt is None else prompt + cached), _int(timings.get("predicted_n")), "timings"
    if "tokens_predicted" in obj:
        return _int(obj.get("tokens_evaluated")), _int(obj.get("tokens_predicted")), "llamacpp"
    return None, None, None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


@dataclass
class StreamTally:
    """Timing and token accounting for one reply, fed with raw bytes as they arrive."""

    started: float
    stream: bool
    first_byte_at: float | None = None
    first_content_at: float | None = None
    last_content_at: float | None = None
    itl_s: list[float] = field(default_factory=list)
    content_chunks: int = 0
    tokens_in: int | None = None
    tokens_out_reported: int | None = None
    tokens_source: str | None = None
    error: str | None = None
    done: bool = False
    body_limit: int = 8 << 20
    _parser: SSEParser = field(default_factory=SSEParser)
    _body: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes, now: float) -> None:
        if not chunk:
            return
        if self.first_byte_at is None:
            self.first_byte_at = now
        if not self.stream:
            if len(self._body) + len(chunk) <= self.body_limit:
                self._body += chunk
            return
        for kind, data in self._parser.feed(chunk):
            if data.strip() == b"[DONE]":
                self.done = True
                continue
            obj = _loads(data)
            if obj is None:
                continue
            if kind == "error" or "error" in obj:
                self.error = _error_text(obj)
                continue
            self._tokens(obj)
            if has_content(obj):
                self.content_chunks += 1
                if self.first_content_at is None:
                    self.first_content_at = now
                elif self.last_content_at is not None:
                    self.itl_s.append(now - self.last_content_at)
                self.last_content_at = now

    def _tokens(self, obj: dict[str, Any]) -> None:
        t_in, t_out, source = reported_tokens(obj)
        if source is None:
            return
        if self.tokens_source is None or SOURCE_RANK[source] >= SOURCE_RANK[self.tokens_source]:
            self.tokens_source = source
            self.tokens_in = t_in if t_in is not None else self.tokens_in
            self.tokens_out_reported = t_out

    def finish(self) -> None:
        """Parse a non-streamed body once it is complete."""
        if self.stream or not self._body:
            return
        obj = _loads(bytes(self._body))
        self._body = bytearray()
        if obj is None:
            return
        if "error" in obj:
            self.error = _error_text(obj)
        self._tokens(obj)
        if has_content(obj) or _message_content(obj):
            self.content_chunks = 1

    @property
    def ttft_at(self) -> float | None:
        return self.first_content_at if self.stream else self.first_byte_at

    @property
    def tokens_out(self) -> int | None:
        if self.tokens_out_reported is not None:
            return self.tokens_out_reported
        return self.content_chunks if self.stream else None

    @property
    def source(self) -> str | None:
        if self.tokens_out_reported is not None:
            return self.tokens_source
        return "counted" if self.stream else None


def _message_content(obj: dict[str, Any]) -> bool:
    choices = obj.get("choices")
    if isinstance(choices, list):
        return any(isinstance(c, dict) and isinstance(c.get("message"), dict) and c["message"].get("content")
                   for c in choices)
    return False


def _loads(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested past the parser's depth
        return None
    return obj if isinstance(obj, dict) else None


def _error_text(obj: dict[str, Any]) -> str:
    err = obj.get("error", obj)
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)
