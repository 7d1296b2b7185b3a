"""The gateway's HTTP/1.1 client to the worker: one loopback connection per request, the reply parsed by
httptools (llhttp, C) and handed over chunk by chunk.

Why not httpx here: relaying a token stream costs per chunk, and httpx's pure-Python HTTP/1.1 stack spent about
90 µs of CPU per chunk on this kind of machine — CPU taken from the engine on a small host (benchmarks.md,
gateway overhead). This client does only what the pass-through needs: send one request, parse the status line,
headers and (chunked or sized) body, signal back-pressure, time out on silence, and say precisely how it failed:

- WorkerGone: connection refused/reset/closed, or a malformed reply — the worker died or is not there;
- UpstreamTimeout: the worker said nothing for `read_timeout_s`.
Both carry `got_response` (status line received) so the caller can apply its retry rule. `Connection: close` is
always sent: llama-server closes after streamed replies anyway, and a loopback connect costs less than a token.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterable

import httptools

PAUSE_AT = 64     # buffered body chunks before we stop reading from the worker (the client is slow)
RESUME_AT = 8
# The most bytes of a reply the gateway reads before the worker's headers are complete: a worker that sends
# endless headers (or one endless header line) must not make the gateway (the root daemon) buffer them all.
MAX_HEAD_BYTES = 64 * 1024


class UpstreamError(Exception):
    def __init__(self, message: str, got_response: bool = False) -> None:
        super().__init__(message)
        self.got_response = got_response


class WorkerGone(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class _ReplyProtocol(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.status: int | None = None
        self.headers_done = loop.create_future()
        self.chunks: collections.deque[bytes] = collections.deque()
        self.wakeup: asyncio.Future[None] | None = None
        self.complete = False
        self.error: UpstreamError | None = None
        self.paused = False
        self.framed = False          # content-length or chunked: EOF before completion is an error
        self.head_bytes = 0          # bytes received before the headers were complete

    # transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(WorkerGone(f"malformed reply from the worker: {e}", self.status is not None))
            if self.transport is not None:
                self.transport.abort()
            return
        if not self.headers_done.done():
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._fail(WorkerGone(f"reply headers from the worker over {MAX_HEAD_BYTES} bytes",
                                      self.status is not None))
                if self.transport is not None:
                    self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.complete:
            return
        if self.status is not None and self.headers_done.done() and not self.framed:
            self.on_message_complete()  # a body delimited by the connection's end
            return
        what = f"{type(exc).__name__}: {exc}" if exc else "closed"
        self._fail(WorkerGone(f"worker connection lost ({what})", self.status is not None))

    # parser callbacks
    def on_status(self, status: bytes) -> None:
        self.status = self.parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        if self.status is None:
            self.status = self.parser.get_status_code()
        if not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        if len(self.chunks) >= PAUSE_AT and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        if not self.headers_done.done():
            self.headers_done.set_result(None)
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        if not self.headers_done.done():
            self.headers_done.set_exception(error)
            self.headers_done.exception()  # mark retrieved: the caller may be gone
        self._wake()

    def _wake(self) -> None:
        w = self.wakeup
        if w is not None and not w.done():
            w.set_result(None)

    def resume_if_drained(self) -> None:
        if self.paused and len(self.chunks) <= RESUME_AT and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()


class UpstreamReply:
    """A worker reply being received: status and raw headers now, the body through `aiter_raw()`."""

    def __init__(self, proto: _ReplyProtocol, read_timeout_s: float) -> None:
        self._proto = proto
        self.read_timeout_s = read_timeout_s
        self.status_code: int = proto.status or 0
        self.raw_headers = proto.headers

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        return next((v.decode("latin-1") for k, v in self.raw_headers if k.lower() == key), None)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        proto = self._proto
        loop = proto.loop
        while True:
            if proto.chunks:
                chunk = proto.chunks.popleft()
                proto.resume_if_drained()
                yield chunk
                continue
            if proto.error is not None:
                raise proto.error
            if proto.complete:
                return
            proto.wakeup = loop.create_future()
            try:
                async with asyncio.timeout(self.read_timeout_s):
                    await proto.wakeup
            except TimeoutError:
                raise UpstreamTimeout(f"worker silent for {self.read_timeout_s:g} s", True) from None
            finally:
                proto.wakeup = None

    def close(self) -> None:
        """Drop the connection unless the reply is complete; idempotent, and synchronous so that it also runs
        in a task being cancelled (a client that left)."""
        if self._proto.transport is not None and not self._proto.complete:
            self._proto.transport.abort()  # the worker sees the client leave and stops generating

    async def aclose(self) -> None:
        self.close()


async def open_reply(host: str, port: int, method: str, target: str, headers: Iterable[tuple[str, str]],
                     body: bytes, connect_timeout_s: float, read_timeout_s: float) -> UpstreamReply:
    """Connect, send the request, and wait for the reply's status line and headers."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout_s):
            _transport, proto = await loop.create_connection(lambda: _ReplyProtocol(loop), host, port)
    except TimeoutError:
        raise WorkerGone(f"connect to {host}:{port} timed out") from None
    except OSError as e:
        raise WorkerGone(f"connect to {host}:{port} failed: {e.strerror or e}") from None
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}:{port}", f"content-length: {len(body)}",
             "connection: close"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in ("host", "content-length", "connection")]
    assert proto.transport is not None
    proto.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    try:
        async with asyncio.timeout(read_timeout_s):
            await asyncio.shield(proto.headers_done)
    except TimeoutError:
        proto.transport.abort()
        raise UpstreamTimeout(f"no reply from the worker within {read_timeout_s:g} s") from None
    except BaseException:
        proto.transport.abort()
        raise
    return UpstreamReply(proto, read_timeout_s)
