"""One benchmark request, measured as the client sees it (chunk accounting shared with the gateway: sse.py)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent.bench.corpus import BenchRequest
from agent.gateway.sse import SSEParser, StreamTally

API_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "llamacpp": "/completion"}
# The conversation id of a request (multi-turn scenario, replayed traffic with `session`): the gateway may keep
# a conversation on the engine slot that holds its prefix. A header, so the body the engine sees is unchanged.
SESSION_HEADER = "X-Session-Id"


@dataclass
class RequestResult:
    kind: str
    start: float                     # seconds since the level started
    end: float
    ok: bool
    status: int | None = None
    error: str | None = None         # http_503, http_4xx, http_5xx, transport, timeout, stream_error
    retry_after: str | None = None
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    tokens_in: int | None = None
    tokens_out: int = 0
    detail: str | None = None        # what went wrong, for the report's error examples
    stale_retry: bool = False        # resent once after a stale keep-alive connection (see send())
    session: str | None = None       # the request's conversation id (SESSION_HEADER)
    tokens_in_est: int | None = None  # prompt tokens estimated client-side (words * 1.3)
    text: str | None = None          # the reply's text, when the caller asked for it (keep_text)

    @property
    def e2e_s(self) -> float:
        return self.end - self.start


def build_body(api: str, req: BenchRequest, model: str | None, ignore_eos: bool) -> dict[str, Any]:
    body: dict[str, Any]
    if api == "chat":
        if req.messages is not None:
            messages = [{"role": role, "content": content} for role, content in req.messages]
        else:
            messages = ([{"role": "system", "content": req.system}] if req.system else []) + [
                {"role": "user", "content": req.prompt}]
        body = {"messages": messages, "max_tokens": req.max_tokens, "stream": True,
                "stream_options": {"include_usage": True}}
    elif api == "completions":
        body = {"prompt": _flat_prompt(req), "max_tokens": req.max_tokens, "stream": True}
    elif api == "llamacpp":
        body = {"prompt": _flat_prompt(req), "n_predict": req.max_tokens, "stream": True}
    else:
        raise ValueError(f"unknown api {api!r}")
    if model:
        body["model"] = model
    if ignore_eos:
        body["ignore_eos"] = True
    return body


def _flat_prompt(req: BenchRequest) -> str:
    """The text prompt of the completion APIs: a conversation as "role: content" paragraphs."""
    if req.messages is not None:
        return "".join(f"{role}: {content}\n\n" for role, content in req.messages) + "assistant: "
    return f"{req.system or ''}\n\n{req.prompt}\n\n"


class ReplyText:
    """The generated text of a streamed reply, for clients that resend it (multi-turn chat)."""

    def __init__(self) -> None:
        self._parser = SSEParser()
        self.parts: list[str] = []

    def feed(self, chunk: bytes) -> None:
        for kind, data in self._parser.feed(chunk):
            if kind != "data" or data.strip() == b"[DONE]":
                continue
            try:
                obj = json.loads(data)
            except (ValueError, UnicodeDecodeError, RecursionError):
                continue
            if isinstance(obj, dict):
                self.parts.extend(_texts(obj))

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _texts(obj: dict[str, Any]) -> list[str]:
    choices = obj.get("choices")
    if not isinstance(choices, list):
        content = obj.get("content")
        return [content] if isinstance(content, str) else []
    out: list[str] = []
    for c in choices:
        if not isinstance(c, dict):
            continue
        delta = c.get("delta")
        piece = delta.get("content") if isinstance(delta, dict) else c.get("text")
        if isinstance(piece, str):
            out.append(piece)
    return out


async def send(client: httpx.AsyncClient, url: str, api: str, req: BenchRequest, origin: float,
               model: str | None = None, ignore_eos: bool = False, keep_text: bool = False) -> RequestResult:
    """POST one streaming request; never raises for HTTP or transport failures (they are results).

    One exception is resent at once, as HTTP clients do for a pooled keep-alive connection the server had closed
    (llama-server closes after every streamed reply without a Connection: close): a transport failure before any
    response came back ("disconnected without sending a response", or a reset when the server closed with our
    request unread). A server that fails the resend too is reported as a transport error.
    """
    result = await _send_once(client, url, api, req, origin, model, ignore_eos, keep_text)
    if result.error == "transport" and result.status is None:
        result = await _send_once(client, url, api, req, origin, model, ignore_eos, keep_text)
        result.stale_retry = True
    result.session = req.session
    result.tokens_in_est = req.tokens_est
    return result


async def _send_once(client: httpx.AsyncClient, url: str, api: str, req: BenchRequest, origin: float,
                     model: str | None, ignore_eos: bool, keep_text: bool) -> RequestResult:
    body = build_body(api, req, model, ignore_eos)
    headers = {SESSION_HEADER: req.session} if req.session else None
    t0 = time.monotonic()
    tally = StreamTally(started=t0, stream=True)
    reply = ReplyText() if keep_text else None
    status = None
    try:
        async with client.stream("POST", url + API_PATHS[api], json=body, headers=headers) as r:
            status = r.status_code
            if status != 200:
                await r.aread()
                kind = "http_503" if status == 503 else ("http_4xx" if status < 500 else "http_5xx")
                return RequestResult(req.kind, t0 - origin, time.monotonic() - origin, False, status, kind,
                                     retry_after=r.headers.get("retry-after"))
            async for chunk in r.aiter_raw():
                tally.feed(chunk, time.monotonic())
                if reply is not None:
                    reply.feed(chunk)
    except httpx.TimeoutException as e:
        return _partial(req, tally, origin, t0, status, "timeout", detail=f"{type(e).__name__}: {e}")
    except httpx.HTTPError as e:
        return _partial(req, tally, origin, t0, status, "transport", detail=f"{type(e).__name__}: {e}")
    end = time.monotonic()
    if tally.error:
        return _partial(req, tally, origin, t0, status, "stream_error", end, detail=tally.error)
    return RequestResult(req.kind, t0 - origin, end - origin, True, status,
                         ttft_s=None if tally.first_content_at is None else tally.first_content_at - t0,
                         itl_s=tally.itl_s, tokens_in=tally.tokens_in, tokens_out=tally.tokens_out or 0,
                         text=None if reply is None else reply.text)


def _partial(req: BenchRequest, tally: StreamTally, origin: float, t0: float, status: int | None, kind: str,
             end: float | None = None, detail: str | None = None) -> RequestResult:
    end = time.monotonic() if end is None else end
    return RequestResult(req.kind, t0 - origin, end - origin, False, status, kind,
                         tokens_out=tally.tokens_out or 0, detail=detail)
