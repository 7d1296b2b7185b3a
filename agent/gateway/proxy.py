"""The pass-through: admission, hold while the worker is not ready, one safe retry, streaming with measurement.

Retry rule (the only one): a request is retried at most once, and only when the worker failed *before any byte
of the reply reached the client* — connection refused/reset, the worker died during prompt processing, or it
answered 503 while loading. The gateway reads the worker's first body chunk before it starts the client's
response, so "before any byte" covers everything up to the first generated chunk. It waits for the worker to be
ready again (up to queue_timeout_s from the failure) and sends the same request body. Once a byte has been
forwarded, a failure ends the client's response as broken (an SSE error event for streams, then the connection
closes without the final chunk) and is never retried: the client would otherwise see duplicated or mixed text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from agent.gateway.admission import AdmissionGate, Rejected
from agent.gateway.affinity import SESSION_HEADER
from agent.gateway.body import BodyTimeout, BodyTooLarge, ClientBody, ClientGone
from agent.gateway.levers import Levers
from agent.gateway.settings import GatewaySettings
from agent.gateway.sse import StreamTally
from agent.gateway.stats import GatewayStats, RequestRecord
from agent.gateway.upstream import WorkerEndpoint, wait_ready
from agent.gateway.upstream_client import UpstreamReply, UpstreamTimeout, WorkerGone, open_reply

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                        "transfer-encoding", "upgrade", "host", "content-length"})
# The largest worker reply to a pass-through GET (/v1/models, /props) the gateway buffers: read raw (no gzip
# decoding, so no decompression bomb), and a bigger one is a 502, not the gateway's memory.
MAX_PASSTHROUGH_BYTES = 8 << 20
# Failures where the worker did not get or did not finish the request: safe to retry if nothing was forwarded.
WORKER_GONE = (WorkerGone,)


class _WorkerLoading(Exception):
    pass


class _Shaped:
    """The slot the gateway's levers gave the request's body, set when the body is shaped (after the worker is
    ready, per attempt) and freed when the request ends."""

    __slots__ = ("slot",)

    def __init__(self) -> None:
        self.slot: int | None = None


def wants_stream(body: bytes) -> bool:
    try:
        payload = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested past the parser's depth: the worker says no
        return False
    return isinstance(payload, dict) and bool(payload.get("stream"))


def split_base_url(base: str) -> tuple[str, int]:
    """'http://127.0.0.1:8081' -> ('127.0.0.1', 8081). The worker is plain HTTP on this host."""
    parts = urlsplit(base)
    if parts.scheme != "http" or not parts.hostname:
        raise WorkerGone(f"unsupported worker URL {base!r} (expected http://HOST:PORT)")
    return parts.hostname, parts.port or 80


def request_headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}


def reply_headers(upstream: UpstreamReply, keep_length: bool) -> list[tuple[bytes, bytes]]:
    out = []
    for k, v in upstream.raw_headers:
        name = k.decode("latin-1").lower()
        if name in HOP_BY_HOP and not (keep_length and name == "content-length"):
            continue
        out.append((k, v))
    return out


def hosttune_headers(rec: RequestRecord) -> list[tuple[bytes, bytes]]:
    """What the gateway did to a request before the worker answered: x-hosttune-held-ms when it was held for a
    (re)starting worker, x-hosttune-retried when it was resent once after the worker failed before any byte."""
    out = []
    if rec.held_s > 0 or rec.retried:
        out.append((b"x-hosttune-held-ms", str(round(rec.held_s * 1000)).encode()))
    if rec.retried:
        out.append((b"x-hosttune-retried", b"1"))
    return out


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class Proxy:
    def __init__(self, endpoint: WorkerEndpoint, gate: AdmissionGate, stats: GatewayStats,
                 settings: GatewaySettings, client: httpx.AsyncClient, levers: Levers | None = None) -> None:
        self.endpoint = endpoint
        self.levers = levers or Levers()
        self.gate = gate
        self.stats = stats
        self.settings = settings
        self.client = client

    # --- replies that never reached the worker --------------------------------------------------------------

    def _reject(self, rec: RequestRecord, reason: str, retry_after_s: int | None = None) -> Response:
        rec.outcome, rec.status, rec.reject_reason = "rejected", 503, reason
        rec.queue_wait_s = time.monotonic() - rec.started
        self.stats.finish(rec)
        text = {"queue_full": "admission queue is full", "queue_timeout": "timed out waiting for admission",
                "not_ready": "worker is not ready (starting or restarting)",
                "shed": "overloaded: the predicted wait exceeds the TTFT SLO"}.get(reason, reason)
        retry = self.settings.retry_after_s if retry_after_s is None else retry_after_s
        return JSONResponse({"error": {"message": text, "type": "unavailable", "code": 503, "reason": reason}},
                            status_code=503, headers={"Retry-After": str(retry)})

    def _fail(self, rec: RequestRecord, status: int, outcome: str, message: str,
              retry_after: bool = False) -> Response:
        rec.outcome, rec.status, rec.error = outcome, status, message
        rec.e2e_s = time.monotonic() - rec.started
        self.stats.finish(rec)
        headers = {"Retry-After": str(self.settings.retry_after_s)} if retry_after else None
        return JSONResponse({"error": {"message": message, "type": "server_error" if status != 503 else "unavailable",
                                       "code": status}}, status_code=status, headers=headers)

    # --- the request path -------------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Admit, then read the body, open the worker's reply (with hold and one retry), and hand back a streaming
        Response. A client that disconnects while queued or held gives its place up at once; a client refused
        admission never made the gateway read more than the first PEEK_BYTES of its body (agent/gateway/body.py)."""
        started = time.monotonic()
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.settings.max_body_bytes):
            return self._too_large()
        rec = RequestRecord(route=request.url.path, stream=False, started=started)
        client = ClientBody(request.receive, self.settings.max_body_bytes)
        reading = asyncio.ensure_future(client.run())
        work = asyncio.ensure_future(self._admit_and_open(request, client, rec))
        try:
            await asyncio.wait({work, reading}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reading.cancel()  # the body is read or refused; the reply watches for a disconnect itself
        if not work.done() and client.too_large:  # over the limit before admission: no need to wait for it
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            return self._too_large()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            rec.outcome, rec.status = "client_abort", 499
            rec.e2e_s = time.monotonic() - started
            self.stats.finish(rec)
            return Response(status_code=499)
        return work.result()

    def _too_large(self) -> Response:
        return JSONResponse({"error": {"message": f"request body larger than {self.settings.max_body_bytes} bytes",
                                       "type": "invalid_request_error", "code": 413}}, status_code=413)

    async def _admit_and_open(self, request: Request, client: ClientBody, rec: RequestRecord) -> Response:
        deadline = rec.started + self.settings.queue_timeout_s
        if (retry := self.levers.shed(self.gate)) is not None:
            return self._reject(rec, "shed", retry)
        # With shedding on, a request still queued once its wait alone has used up the TTFT budget has missed the
        # SLO whatever happens next: refuse it then rather than spend the worker on an answer that is already late
        # (a prediction at arrival cannot see a queue that built up before the service time was known).
        late = self.levers.late_after(rec.started)
        try:
            await self.gate.acquire(deadline if late is None else min(deadline, late))
        except Rejected as r:
            if r.reason == "queue_timeout" and late is not None and late < deadline:
                return self._reject(rec, "shed", self.levers.count_late())
            return self._reject(rec, r.reason)
        handed_off = False
        shaped = _Shaped()
        try:
            try:
                body = await client.read(time.monotonic() + self.settings.body_timeout_s)
            except BodyTooLarge:
                return self._too_large()
            except ClientGone:
                rec.outcome, rec.status = "client_abort", 499
                rec.e2e_s = time.monotonic() - rec.started
                self.stats.finish(rec)
                return Response(status_code=499)
            except BodyTimeout:
                return JSONResponse({"error": {"message": f"request body not received within "
                                               f"{self.settings.body_timeout_s:g} s", "type": "invalid_request_error",
                                               "code": 408}}, status_code=408)
            rec.stream = wants_stream(body)
            opened = await self._open(request, body, rec, deadline, shaped)
            if isinstance(opened, Response):
                return opened
            upstream, first, rest = opened
            handed_off = True
            return Forwarded(self, rec, upstream, first, rest, shaped.slot)
        finally:
            if not handed_off:
                self.gate.release()
                self.levers.done(shaped.slot, None)

    async def _open(self, request: Request, body: bytes, rec: RequestRecord, deadline: float, shaped: _Shaped
                    ) -> Response | tuple[UpstreamReply, bytes, AsyncIterator[bytes]]:
        headers = list(request_headers(request).items())
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        for attempt in (0, 1):
            hold_from = None if self.endpoint.is_ready() and self.endpoint.base_url() else time.monotonic()
            ready = await wait_ready(self.endpoint, deadline)
            if hold_from is not None:
                rec.held_s += time.monotonic() - hold_from
            if not ready:
                return self._reject(rec, "not_ready")
            if attempt == 1 and not await self._answers_health(deadline):
                return self._reject(rec, "not_ready")
            # Shape the body only now, against the worker that will answer it: a request held across a restart
            # that lowered `parallel` must not carry an id_slot the new llama-server does not have.
            self.levers.done(shaped.slot, None)
            rewritten = self.levers.rewrite(body, request.headers.get(SESSION_HEADER))
            shaped.slot = rewritten.slot
            base = self.endpoint.base_url()
            if rec.queue_wait_s is None:
                rec.queue_wait_s = time.monotonic() - rec.started
            upstream: UpstreamReply | None = None
            handed_off = False
            try:
                host, port = split_base_url(base or "")
                upstream = await open_reply(host, port, request.method, path, headers, rewritten.body,
                                            self.settings.connect_timeout_s, self.settings.read_timeout_s)
                if upstream.status_code == 503:
                    raise _WorkerLoading()
                rest = upstream.aiter_raw()
                first = b""
                async for chunk in rest:
                    if chunk:
                        first = chunk
                        break
                handed_off = True
                return upstream, first, rest
            except (*WORKER_GONE, _WorkerLoading) as e:
                self.endpoint.report_failure()
                if attempt == 0 and self.settings.retry_before_first_byte:
                    log.info("worker failed before the first byte (%s); retrying once when ready", type(e).__name__)
                    rec.retried = True
                    deadline = time.monotonic() + self.settings.queue_timeout_s
                    continue
                if isinstance(e, _WorkerLoading):
                    return self._reject(rec, "not_ready")
                # Nothing reached the client and the worker produced nothing for it: the request can be sent again
                # as it is, so say so (503 + Retry-After) rather than 502.
                return self._fail(rec, 503, "error", f"worker failed before replying: {e}", retry_after=True)
            except UpstreamTimeout as e:
                return self._fail(rec, 504, "timeout", f"worker timed out: {e}")
            finally:
                # Every way out but the hand-off closes the worker connection — a client that left while we
                # waited for the first chunk (cancellation) included: the engine then stops generating for nobody.
                if upstream is not None and not handed_off:
                    upstream.close()
        raise AssertionError("unreachable")

    async def _answers_health(self, deadline: float) -> bool:
        """Before the retry: the provider may still say "ready" for a moment after its worker died (a supervisor
        notices the exit asynchronously), so also wait until the worker itself answers /health with anything but
        503 (llama-server's "loading") or a connection error."""
        while True:
            base = self.endpoint.base_url()
            if base and self.endpoint.is_ready():
                try:
                    async with self.client.stream("GET", f"{base}/health", timeout=1.0) as r:
                        if r.status_code != 503:  # the status is all we need: the body is never read
                            return True
                except httpx.HTTPError:
                    pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(0.1, remaining))
            await wait_ready(self.endpoint, deadline)

    async def passthrough_get(self, request: Request) -> Response:
        """GET /v1/models and friends: no admission (cheap, no tokens), 503 while the worker is not ready."""
        base = self.endpoint.base_url()
        if not base or not self.endpoint.is_ready():
            return JSONResponse({"error": {"message": "worker is not ready", "code": 503}}, status_code=503,
                                headers={"Retry-After": str(self.settings.retry_after_s)})
        try:
            async with self.client.stream("GET", f"{base}{request.url.path}",
                                          headers=request_headers(request)) as r:
                body = bytearray()
                async for chunk in r.aiter_raw():
                    body += chunk
                    if len(body) > MAX_PASSTHROUGH_BYTES:
                        return JSONResponse({"error": {"message": f"worker reply larger than "
                                                       f"{MAX_PASSTHROUGH_BYTES} bytes", "code": 502}},
                                            status_code=502)
        except httpx.HTTPError as e:
            self.endpoint.report_failure()
            return JSONResponse({"error": {"message": f"worker unavailable: {type(e).__name__}", "code": 502}},
                                status_code=502)
        return Response(bytes(body), status_code=r.status_code,
                        headers={k: v for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP})


class Forwarded(Response):
    """The client's response: the worker's status and headers, then its body chunk by chunk, measured."""

    def __init__(self, proxy: Proxy, rec: RequestRecord, upstream: UpstreamReply, first: bytes,
                 rest: AsyncIterator[bytes], slot: int | None = None) -> None:
        self.proxy = proxy
        self.slot = slot
        self.rec = rec
        self.upstream = upstream
        self.first = first
        self.rest = rest
        self.status_code = upstream.status_code
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rec, upstream = self.rec, self.upstream
        tally = StreamTally(started=rec.started, stream=rec.stream)
        state: dict[str, Any] = {"outcome": None, "error": None}
        try:
            async with anyio.create_task_group() as tg:
                async def watch() -> None:
                    await _until_disconnect(receive)
                    # uvicorn also reports "disconnect" once the response is complete: only an earlier one counts
                    if state["outcome"] is None:
                        state["outcome"] = "client_abort"
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                await self._pump(send, tally, state)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
                self.proxy.gate.release()
                self._record(tally, state)

    async def _pump(self, send: Send, tally: StreamTally, state: dict[str, Any]) -> None:
        rec = self.rec
        keep_length = not rec.stream
        await send({"type": "http.response.start", "status": self.upstream.status_code,
                    "headers": reply_headers(self.upstream, keep_length) + hosttune_headers(rec)})
        try:
            if self.first:
                tally.feed(self.first, time.monotonic())
                await send({"type": "http.response.body", "body": self.first, "more_body": True})
            async for chunk in self.rest:
                tally.feed(chunk, time.monotonic())
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except WorkerGone as e:
            state["outcome"], state["error"] = "error", f"worker failed mid-reply: {e}"
            self.proxy.endpoint.report_failure()
        except UpstreamTimeout as e:
            state["outcome"], state["error"] = "timeout", f"worker timed out mid-reply: {e}"
        except OSError:
            state["outcome"] = "client_abort"  # the client's socket went away under send()
            return
        if state["outcome"] is None:
            state["outcome"] = "ok" if self.upstream.status_code < 400 else "error"
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if rec.stream:
            event = json.dumps({"error": {"message": state["error"], "type": "server_error", "code": 502}})
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": f"data: {event}\n\n".encode(), "more_body": True})
        # Leave the response unfinished: the server closes the connection, so the client sees a broken reply
        # rather than a complete-looking one.

    def _record(self, tally: StreamTally, state: dict[str, Any]) -> None:
        rec = self.rec
        tally.finish()
        now = time.monotonic()
        rec.status = self.upstream.status_code
        rec.outcome = state["outcome"] or "client_abort"
        rec.error = state["error"] or tally.error
        if rec.outcome == "ok" and tally.error:
            rec.outcome = "error"
        ttft_at = tally.ttft_at
        rec.ttft_s = None if ttft_at is None else ttft_at - rec.started
        rec.itl_s = tally.itl_s
        rec.e2e_s = now - rec.started
        rec.tokens_in, rec.tokens_out, rec.tokens_source = tally.tokens_in, tally.tokens_out, tally.source
        rec.content_chunks = tally.content_chunks
        self.proxy.stats.finish(rec)
        # the service time (admission to the last byte) of a served request teaches the shedding estimate
        self.proxy.levers.done(self.slot, rec.e2e_s - (rec.queue_wait_s or 0.0) if rec.outcome == "ok" else None)
