"""A compromised worker (it runs unprivileged, the daemon as root) must not make the daemon buffer without bound:
its stdout/stderr lines, its reply headers to the gateway, an SSE event without an end, its /metrics or /slots
bodies, or the /v1/models reply the gateway relays."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import threading
import types

import pytest
from test_gateway_upstream_client import run as run_script

from agent.gateway.sse import MAX_EVENT_BYTES, SSEParser
from agent.gateway.upstream_client import WorkerGone, open_reply
from agent.worker.supervisor import PIPE_LINE_MAX, Supervisor


class _Sink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def test_supervisor_reads_worker_pipes_in_bounded_lines() -> None:
    """A worker writing 4 MiB without a newline is read (and logged) in pieces of at most PIPE_LINE_MAX."""
    fake = types.SimpleNamespace(_cond=threading.Condition(), _stderr_tail=collections.deque(maxlen=40))
    sink = _Sink()
    Supervisor._pump(fake, io.BytesIO(b"x" * (4 << 20)), sink, True)  # type: ignore[arg-type]
    assert sum(map(len, sink.writes)) == 4 << 20
    assert max(map(len, sink.writes)) <= PIPE_LINE_MAX
    assert max(map(len, fake._stderr_tail)) <= PIPE_LINE_MAX


def test_gateway_refuses_a_worker_reply_with_endless_headers() -> None:
    """Headers (or one header line) that never end: WorkerGone once MAX_HEAD_BYTES arrived, the rest unread."""
    sent: list[int] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nx-a: ")
        with contextlib.suppress(OSError):
            for _ in range(256):  # 16 MiB if the gateway kept reading
                writer.write(b"a" * 65536)
                await writer.drain()
                sent.append(1)

    async def client(port: int) -> object:
        with pytest.raises(WorkerGone, match="headers"):
            await open_reply("127.0.0.1", port, "GET", "/", [], b"", 2.0, 10.0)
        return None

    run_script(script, client)
    assert len(sent) < 256


def test_gateway_refuses_a_worker_reply_with_many_small_headers() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        with contextlib.suppress(OSError):
            for i in range(200_000):
                writer.write(b"x-%d: 1\r\n" % i)
                if i % 1000 == 0:
                    await writer.drain()

    async def client(port: int) -> object:
        with pytest.raises(WorkerGone, match="headers"):
            await open_reply("127.0.0.1", port, "GET", "/", [], b"", 2.0, 10.0)
        return None

    run_script(script, client)


def test_sse_parser_does_not_buffer_an_endless_event() -> None:
    """A stream that never sends the blank line ending an event keeps at most MAX_EVENT_BYTES buffered, and the
    events after it are still parsed."""
    parser = SSEParser()
    for _ in range(64):  # 4 MiB, no "\n\n"
        assert parser.feed(b"data: " + b"x" * 65536) == []
        assert len(parser._buf) <= MAX_EVENT_BYTES + 65536 + 6
    assert parser.feed(b"\n\ndata: {\"content\": \"ok\"}\n\n")[-1] == ("data", b'{"content": "ok"}')
