"""The limits every hosttune HTTP server applies before its app (agent/httpguard.py): Host names (DNS
rebinding), URL and header sizes, a parser cap, and a concurrency limit — on the API's and the gateway's real
uvicorn, and in the config that sets them."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from agent.config import ApiSettings, load_settings
from agent.daemon.http import ServerThread, bind_tcp, bind_unix
from agent.errors import InputError
from agent.gateway.server import GatewayServer
from agent.httpguard import ServerLimits, host_names, host_of


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def small_app() -> Starlette:
    return Starlette(routes=[Route("/{rest:path}", _hello, methods=["GET", "POST"])])


@pytest.fixture
def api_server() -> Iterator[ServerThread]:
    """A server as the daemon runs its API: our socket, bound to 127.0.0.1 port 0, default limits."""
    server = ServerThread(small_app(), bind_tcp("127.0.0.1", 0), "test-api")
    server.start()
    yield server
    server.stop()


def raw_request(port: int, head: bytes) -> bytes:
    """Send a raw request head, return whatever the server answers before it closes (or 5 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and b"connection: close" in out.lower():
                    continue
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def test_host_names_and_parsing() -> None:
    names = host_names("127.0.0.1", ["Box.Example.", "10.0.0.5"])
    assert names == {"localhost", "127.0.0.1", "::1", "box.example", "10.0.0.5"}
    assert host_names("0.0.0.0") == {"localhost", "127.0.0.1", "::1"}  # a wildcard bind is no name
    assert host_of(b"Evil.Example:7711") == "evil.example"
    assert host_of(b"[::1]:8080") == "::1"
    assert host_of(b"localhost.") == "localhost"


def test_api_server_refuses_a_foreign_host_header_with_421(api_server: ServerThread) -> None:
    """DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 sends Host: evil.example."""
    base = api_server.url
    r = httpx.get(base + "/v1/status", headers={"Host": "evil.example:7711"})
    assert r.status_code == 421 and r.json()["error"] == "misdirected_request"
    r = httpx.post(base + "/v1/apply", headers={"Host": "evil.example"}, json={})
    assert r.status_code == 421
    for good in ("localhost:7711", "127.0.0.1", "[::1]:7711", "LOCALHOST"):
        assert httpx.get(base + "/x", headers={"Host": good}).status_code == 200, good


def test_api_server_answers_414_431_and_drops_a_huge_head(api_server: ServerThread) -> None:
    base = api_server.url
    r = httpx.get(base + "/" + "a" * 10_000)
    assert r.status_code == 414 and r.json()["error"] == "uri_too_long"
    r = httpx.get(base + "/x", headers={f"x-h{i}": "v" * 1000 for i in range(100)})  # ~100 KB of headers
    assert r.status_code == 431 and r.json()["error"] == "headers_too_large"
    # Past four times the limits the parser itself stops buffering: 400 and the connection is closed.
    port = api_server.port
    assert port is not None
    reply = raw_request(port, b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"v" * (1 << 20) + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert httpx.get(base + "/x").status_code == 200  # the server still serves others


def test_concurrency_limit_answers_503() -> None:
    server = ServerThread(small_app(), bind_tcp("127.0.0.1", 0), "test-api",
                          limits=ServerLimits(host_names("127.0.0.1"), max_connections=8))
    server.start()
    held: list[socket.socket] = []
    try:
        assert server.port is not None
        for _ in range(8):  # eight idle connections reach the limit
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        time.sleep(0.2)  # let the server register them (connection_made runs on its loop)
        r = httpx.get(server.url + "/x")
        assert r.status_code == 503
    finally:
        for s in held:
            s.close()
        server.stop()


def test_unix_socket_server_does_not_check_host(tmp_path: Path) -> None:
    server = ServerThread(small_app(), bind_unix(tmp_path / "api.sock"), "test-api")
    server.start()
    try:
        transport = httpx.HTTPTransport(uds=str(tmp_path / "api.sock"))
        with httpx.Client(transport=transport) as c:
            assert c.get("http://evil.example/x").status_code == 200  # no browser reaches a unix socket
            assert c.get("http://localhost/" + "a" * 10_000).status_code == 414
    finally:
        server.stop()


def test_gateway_server_refuses_a_foreign_host_in_openai_shape() -> None:
    server = GatewayServer(small_app(), host="127.0.0.1", port=0).start()
    try:
        r = httpx.post(server.url + "/v1/chat/completions", headers={"Host": "evil.example"}, json={})
        assert r.status_code == 421
        assert r.json()["error"]["type"] == "misdirected_request" and r.json()["error"]["code"] == 421
        r = httpx.get(server.url + "/" + "a" * 10_000)
        assert r.status_code == 414
        assert httpx.get(server.url + "/v1/models").status_code == 200
    finally:
        server.stop()


def test_allowed_hosts_config_is_validated_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ApiSettings(allowed_hosts=["Box.Example"]).allowed_hosts == ["box.example"]
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text("api:\n  allowed_hosts:\n    - evil.example:80\n")
    with pytest.raises(InputError) as e:
        load_settings(cfg)
    assert e.value.field == "api.allowed_hosts.0" and e.value.line == 3
    cfg.write_text("gateway:\n  max_header_bytes: 10\n")
    with pytest.raises(InputError) as e:
        load_settings(cfg)
    assert e.value.field == "gateway.max_header_bytes"


def test_a_trickled_or_silent_request_head_is_cut_at_the_deadline() -> None:
    """Before: uvicorn has no request-head timeout; a client sending a header a byte at a time (or nothing) held
    its connection, and a place under max_connections, for ever."""
    server = ServerThread(small_app(), bind_tcp("127.0.0.1", 0), "test-api",
                          limits=ServerLimits(host_names("127.0.0.1"), head_timeout_s=0.5))
    server.start()
    try:
        assert server.port is not None
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as silent, \
                socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
            slow.sendall(b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Slow: a")
            assert silent.recv(100) == b""  # closed by the server (a timeout here would raise)
            assert slow.recv(100) == b""
        assert httpx.get(server.url + "/x").status_code == 200
    finally:
        server.stop()


def test_api_socket_is_tcp_so_asyncio_disables_nagle() -> None:
    """Found by the API benchmark: bind_tcp made its socket with proto 0, asyncio's TCP_NODELAY step skips such
    sockets, and every reply sent in two writes (head, body) waited for the client's delayed ACK."""
    server = ServerThread(small_app(), bind_tcp("127.0.0.1", 0), "test-api")
    server.start()
    try:
        assert server.sock.proto == socket.IPPROTO_TCP
        conns = [p for p in server.server.server_state.connections]
        assert conns == []
        with socket.create_connection(("127.0.0.1", server.port or 0), timeout=5) as c:
            c.sendall(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert c.recv(1000).startswith(b"HTTP/1.1 200")
            (conn,) = server.server.server_state.connections
            accepted = conn.transport.get_extra_info("socket")  # type: ignore[attr-defined]
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        server.stop()


def test_an_endless_header_value_is_cut_before_it_is_buffered(api_server: ServerThread) -> None:
    """httptools keeps a header's value to itself until its line ends: one header that never ends must still be
    cut at the hard cap (the server reads no more), not buffered for the whole head deadline."""
    port = api_server.port
    assert port is not None
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
        chunk = b"v" * 65536
        try:
            for _ in range(1024):  # 64 MiB if the server kept reading
                s.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
    assert sent < 16 << 20
    assert httpx.get(api_server.url + "/x").status_code == 200
