"""The gateway's worker client against a scripted raw HTTP server: framing (chunked, sized, until close),
failure kinds (refused, lost before / after the status line, malformed, silent), and back-pressure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from agent.gateway.upstream_client import UpstreamTimeout, WorkerGone, open_reply

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def with_server(script: Script, client: Callable[[int], Awaitable[object]]) -> object:
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await client(port), requests
    finally:
        server.close()


async def collect(port: int, read_timeout: float = 5.0) -> tuple[int, list[bytes]]:
    reply = await open_reply("127.0.0.1", port, "POST", "/v1/completions?x=1", [("content-type", "application/json"),
                                                                                 ("authorization", "Bearer t")],
                             b'{"a":1}', 2.0, read_timeout)
    chunks = [c async for c in reply.aiter_raw()]
    await reply.aclose()
    return reply.status_code, chunks


def run(script: Script, client: Callable[[int], Awaitable[object]] = collect) -> object:
    return asyncio.run(with_server(script, client))


def test_chunked_reply_arrives_chunk_by_chunk_and_the_request_is_well_formed() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for word in (b"data: a\n\n", b"data: b\n\n", b"data: [DONE]\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(word), word))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")

    (status, chunks), requests = run(script)  # type: ignore[misc]
    assert status == 200 and b"".join(chunks) == b"data: a\n\ndata: b\n\ndata: [DONE]\n\n"
    assert len(chunks) == 3  # not coalesced: each token reaches the client when it is sent
    head = requests[0].decode()
    assert head.startswith("POST /v1/completions?x=1 HTTP/1.1\r\n")
    assert "content-length: 7\r\n" in head and "connection: close\r\n" in head
    assert "authorization: Bearer t\r\n" in head


def test_sized_and_close_delimited_bodies() -> None:
    async def sized(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await reader.readexactly(7)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    (status, chunks), _ = run(sized)  # type: ignore[misc]
    assert status == 200 and b"".join(chunks) == b'{"a":1}'

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")

    (status, chunks), _ = run(until_close)  # type: ignore[misc]
    assert b"".join(chunks) == b"all of it"


def test_refused_connection_is_worker_gone_without_a_response() -> None:
    async def client() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        await collect(port)

    with pytest.raises(WorkerGone) as info:
        asyncio.run(client())
    assert not info.value.got_response


def test_lost_before_and_after_the_status_line() -> None:
    async def dies_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    with pytest.raises(WorkerGone) as before:
        run(dies_at_once)
    assert not before.value.got_response

    async def dies_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    got: list[bytes] = []

    async def partial(port: int) -> None:
        reply = await open_reply("127.0.0.1", port, "POST", "/", [], b"", 2.0, 5.0)
        async for c in reply.aiter_raw():
            got.append(c)

    with pytest.raises(WorkerGone) as after:
        run(dies_mid_body, partial)
    assert after.value.got_response and got == [b"hello"]


def test_malformed_reply_is_worker_gone() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"this is not http\r\n\r\n")

    with pytest.raises(WorkerGone):
        run(garbage)


def test_silence_is_a_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1.0)

    with pytest.raises(UpstreamTimeout) as info:
        run(silent, lambda port: collect(port, read_timeout=0.2))
    assert not info.value.got_response

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        await asyncio.sleep(1.0)

    with pytest.raises(UpstreamTimeout) as mid:
        run(stalls, lambda port: collect(port, read_timeout=0.2))
    assert mid.value.got_response


def test_slow_consumer_gets_every_chunk_in_order() -> None:
    n = 500

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(n):
            payload = b"%05d" % i
            writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            if i % 50 == 0:
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def slow(port: int) -> bytes:
        reply = await open_reply("127.0.0.1", port, "POST", "/", [], b"", 2.0, 5.0)
        out = bytearray()
        async for c in reply.aiter_raw():
            out += c
            await asyncio.sleep(0)
        return bytes(out)

    body, _ = run(flood, slow)  # type: ignore[misc]
    assert body == b"".join(b"%05d" % i for i in range(n))
