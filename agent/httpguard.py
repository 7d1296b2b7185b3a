"""Limits every HTTP server hosttune runs (the API and the gateway) applies before a request reaches its app.

Why at the server and not in each app: the Host names a server answers to and the size of what its parser buffers
are properties of where and how it listens, not of the routes. Three layers:

- the parser (`bounded_http_protocol`): uvicorn's httptools protocol, which enforces no size on the request line
  or headers, counts them while parsing (and the raw bytes received while a head is incomplete: httptools holds
  a header line until it ends) and drops the connection (400) past a hard cap of four times the limits below, so
  a client streaming an endless header block, or one endless header line, costs a bounded buffer;
- `RequestGuard`, an ASGI middleware in front of the app: 414 for a URL over `max_url_bytes`, 431 for a header
  block over `max_header_bytes`, 421 for a Host header that is not one of the server's names (a web page reaching
  a loopback port through DNS rebinding sends its own name). A request without a Host header passes: a browser
  always sends one. On a unix socket there is no Host check: no browser reaches it;
- uvicorn's `limit_concurrency` (`max_connections`): past it, new requests get 503 at once; and a deadline for
  the request head (`header_timeout_s`), so idle or trickling connections cannot hold those places.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    import uvicorn

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
HARD_CAP_FACTOR = 4  # the parser drops a request head this many times over the limits (the guard answers below)

# One allowed Host entry: a DNS name or an IP literal (IPv6 without brackets), no port, no wildcard.
HOST_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")

Render = Callable[[int, str, str], bytes]  # (status, kind, message) -> JSON body in the app's error shape


def normalize_host_name(name: str) -> str:
    """'Example.COM.' -> 'example.com'; '[::1]' -> '::1'. Raises ValueError for anything but a name or an IP."""
    text = name.strip().lower().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not text or len(text) > 253 or not set(text) <= HOST_NAME_CHARS or text.startswith(("-", ".")):
        raise ValueError(f"{name!r} is not a host name or IP address (no port, no wildcard)")
    return text


def is_loopback(host: str) -> bool:
    """Loopback literals and 'localhost'; any other name counts as remote (no DNS lookup decides this)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_names(bind_host: str | None, extra: Iterable[str] = ()) -> frozenset[str]:
    """The names a server on `bind_host` answers to: the loopback names, the bind address (unless a wildcard),
    and the configured extra names."""
    names = set(LOOPBACK_NAMES) | {normalize_host_name(n) for n in extra}
    if bind_host is not None and bind_host not in WILDCARD_BINDS:
        names.add(normalize_host_name(bind_host))
    return frozenset(names)


def host_of(header: bytes) -> str:
    """The name in a Host header, without the port: b'Evil.example:7711' -> 'evil.example', b'[::1]:80' -> '::1'."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        text = text[1:end] if end > 0 else text
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    text = text.rstrip(".")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


@dataclass(frozen=True)
class ServerLimits:
    allowed_hosts: frozenset[str] | None  # None: Host is not checked (a unix socket)
    max_url_bytes: int = 8192
    max_header_bytes: int = 32768
    max_connections: int = 256
    head_timeout_s: float = 10.0

    @property
    def hard_cap_bytes(self) -> int:
        return HARD_CAP_FACTOR * (self.max_url_bytes + self.max_header_bytes)


def json_error(status: int, kind: str, message: str) -> bytes:
    """The API's error shape ({"error": kind, "detail": message}); the gateway passes its OpenAI-style one."""
    return json.dumps({"error": kind, "detail": message}).encode()


class RequestGuard:
    def __init__(self, app: ASGIApp, limits: ServerLimits, render: Render = json_error) -> None:
        self.app = app
        self.limits = limits
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            refused = self.refusal(scope)
            if refused is not None:
                await self._answer(send, *refused)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        limits = self.limits
        url_bytes = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string") or b"")
        if url_bytes > limits.max_url_bytes:
            return 414, "uri_too_long", f"the URL exceeds {limits.max_url_bytes} bytes (max_url_bytes)"
        headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
        if sum(len(n) + len(v) + 4 for n, v in headers) > limits.max_header_bytes:
            return 431, "headers_too_large", f"the headers exceed {limits.max_header_bytes} bytes (max_header_bytes)"
        if limits.allowed_hosts is not None:
            for name, value in headers:
                if name == b"host" and host_of(value) not in limits.allowed_hosts:
                    return 421, "misdirected_request", ("the Host header names no address of this server "
                                                        "(allowed_hosts)")
        return None

    async def _answer(self, send: Send, status: int, kind: str, message: str) -> None:
        body = self.render(status, kind, message)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class HeadTooLarge(Exception):
    pass


def bounded_http_protocol(hard_cap_bytes: int, head_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a cap on the request line and headers it buffers, and a deadline for them:
    a connection that has not sent a whole request head `head_timeout_s` after it opened (or after a request began)
    is closed — uvicorn has no such timeout, so a client trickling a header a byte at a time held its connection
    (and a place under max_connections) for ever. httptools is a dependency (the gateway's client parses with it
    too), so uvicorn's h11 parser is never used."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        head_cap = hard_cap_bytes
        head_bytes = 0
        head_timer: asyncio.TimerHandle | None = None
        # Raw bytes received inside an incomplete head: httptools keeps a header line to itself (no on_header)
        # until the line ends, so one endless header is only seen here.
        raw_head_bytes = 0
        head_completed = False

        def data_received(self, data: bytes) -> None:
            in_head, self.head_completed = self.head_timer is not None, False
            super().data_received(data)
            # Counted: chunks that began inside a head that is still incomplete after them (a chunk that also
            # carried a body, pipelined, is not: it would count body bytes as head).
            if in_head and not self.head_completed and self.head_timer is not None \
                    and not self.transport.is_closing():
                self.raw_head_bytes += len(data)
                if self.raw_head_bytes > self.head_cap:
                    self.send_400_response("Request head too large.")

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def _start_head_timer(self) -> None:
            if self.head_timer is None:
                self.head_timer = self.loop.call_later(head_timeout_s, self._head_expired)

        def _stop_head_timer(self) -> None:
            self.raw_head_bytes = 0
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _head_expired(self) -> None:
            self.head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def on_message_begin(self) -> None:
            self.head_bytes = 0
            self._start_head_timer()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self.head_completed = True
            self._stop_head_timer()
            super().on_headers_complete()

        def _count(self, n: int) -> None:
            self.head_bytes += n
            if self.head_bytes > self.head_cap:
                raise HeadTooLarge()  # httptools turns it into a parser error: uvicorn answers 400 and closes

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

    return BoundedHttpToolsProtocol


def server_config(app: ASGIApp, limits: ServerLimits, render: Render = json_error, **options: Any) -> uvicorn.Config:
    """A uvicorn.Config serving `app` behind the guard, with the parser cap and the concurrency limit."""
    import uvicorn  # imported here: the config module needs this module's name checks, not the server

    protocol = bounded_http_protocol(limits.hard_cap_bytes, limits.head_timeout_s)
    return uvicorn.Config(RequestGuard(app, limits, render), http=protocol, limit_concurrency=limits.max_connections,
                          **options)
