"""Clients that leave at any point — queued, while the worker prepares its reply, after the reply's headers but
before its first chunk, mid-stream — must not leave a worker connection behind: the engine would go on generating
for nobody, outside the admission limit. A raw-socket fake worker records when each connection the gateway made
is closed (the engine-tier twin with the real llama-server is tests/e2e/test_gateway_engine.py)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.gateway.app import Gateway, create_app
from agent.gateway.settings import GatewaySettings
from agent.gateway.upstream import StaticUpstream
from tests.support.gateway_fakes import ServedApp

CHAT = "/v1/chat/completions"


class HoldingWorker:
    """Per request (JSON `hold`): wait `head_s`, send a streaming reply's headers, wait `first_s`, then send
    `chunks` chunks `every_s` apart. Counts connections opened and those the gateway closed early."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.opened = 0
        self.open_now = 0
        self.closed_early = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.AbstractServer | None = None

    def start(self) -> HoldingWorker:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop).result(10)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        self.open_now += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            hold = json.loads(await reader.readexactly(length)).get("hold", {})
            gone = asyncio.ensure_future(reader.read(1))  # b"" (EOF) when the gateway closes the connection
            steps: list[tuple[float, bytes]] = [
                (hold.get("head_s", 0.0), b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                          b"transfer-encoding: chunked\r\n\r\n"),
                (hold.get("first_s", 0.0), b"")]
            steps += [(hold.get("every_s", 0.02), b"")] * (hold.get("chunks", 1) - 1)
            for i, (wait_s, data) in enumerate(steps):
                done, _ = await asyncio.wait([gone], timeout=wait_s)
                if done:
                    self.closed_early += 1
                    return
                if not data:
                    event = b'data: {"choices":[{"index":0,"delta":{"content":"w%d "}}]}\n\n' % i
                    data = b"%x\r\n%s\r\n" % (len(event), event)
                writer.write(data)
                await writer.drain()
            writer.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_early += 1
        finally:
            self.open_now -= 1
            writer.close()


@pytest.fixture
def worker() -> Iterator[HoldingWorker]:
    w = HoldingWorker().start()
    yield w
    w.close()


def serve(worker: HoldingWorker, **settings: Any) -> tuple[ServedApp, Gateway]:
    app, gw = create_app(StaticUpstream(worker.url), GatewaySettings(**settings))
    return ServedApp(app), gw


def wait_for(cond: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def send_and_leave(url: str, hold: dict[str, Any], leave_when: Any) -> None:
    """POST a streaming chat request on a raw socket and close it once `leave_when(bytes so far)` is true."""
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True, "hold": hold}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST %s HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                  % (CHAT.encode(), len(body), body))
        got = b""
        s.settimeout(0.02)
        deadline = time.monotonic() + 10
        while not leave_when(got) and time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            got += data


def test_client_leaving_before_the_first_chunk_closes_the_worker_connection(worker: HoldingWorker) -> None:
    """The worker sent its headers and is computing the first token when the client leaves."""
    served, gw = serve(worker)
    with served:
        send_and_leave(served.url, {"head_s": 0, "first_s": 30}, lambda got: worker.opened == 1)
        wait_for(lambda: worker.open_now == 0, "the worker connection was left open (the engine generates on)")
        wait_for(lambda: gw.gate.in_flight == 0, "the admission slot was not given back")
    assert worker.closed_early == 1
    assert list(gw.stats.recent)[-1].outcome == "client_abort"


@pytest.mark.parametrize("hold,leave", [
    ({"head_s": 30}, "connected"),                        # the worker has not answered yet
    ({"head_s": 0, "first_s": 30}, "connected"),          # headers sent, first chunk pending
    ({"chunks": 200, "every_s": 0.05}, "first chunk"),    # mid-stream
])
def test_every_leaving_point_closes_the_worker_connection(worker: HoldingWorker, hold: dict[str, Any],
                                                          leave: str) -> None:
    served, gw = serve(worker)
    with served:
        if leave == "connected":
            send_and_leave(served.url, hold, lambda got: worker.opened == 1)
        else:
            send_and_leave(served.url, hold, lambda got: b"w0" in got)
        wait_for(lambda: worker.open_now == 0, f"worker connection left open ({hold}, left at {leave})")
        wait_for(lambda: gw.gate.in_flight == 0, "the admission slot was not given back")
    assert worker.closed_early == 1


def test_clients_leaving_at_random_points_leave_no_worker_connection(worker: HoldingWorker) -> None:
    """Many clients, some queued behind the admission limit, each leaving after a random time while its reply is
    at a random stage (every reply would run for many seconds). Within a few seconds of the last one leaving, the
    worker has seen every connection closed and no admission slot is held."""
    rng = random.Random(14)
    served, gw = serve(worker, limit=6, max_queue=64)
    with served:
        threads = []
        for _ in range(24):
            hold = {"head_s": rng.choice([0, 0.1, 0.3]), "first_s": rng.choice([0.2, 0.6, 30]),
                    "chunks": 400, "every_s": 0.02}
            leave_at = time.monotonic() + rng.uniform(0, 1.0)
            t = threading.Thread(target=send_and_leave, args=(served.url, hold,
                                                              lambda got, at=leave_at: time.monotonic() >= at))
            t.start()
            threads.append(t)
        for t in threads:
            t.join(30)
        wait_for(lambda: worker.open_now == 0, f"{worker.open_now} worker connections left open", timeout=5)
        wait_for(lambda: gw.gate.in_flight == 0 and gw.gate.queued == 0, "admission slots still held")
    assert worker.opened >= 6 and worker.closed_early == worker.opened
