"""The gateway admits a request before it reads its body (issue 14): a client refused admission never makes the
gateway buffer its body, an admitted body is still bounded, and a slow sender cannot hold a slot for ever.
Driven through the raw ASGI interface so the test counts the gateway's receive() calls."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from starlette.requests import Request

from agent.gateway.admission import AdmissionGate
from agent.gateway.proxy import Proxy
from agent.gateway.settings import GatewaySettings
from agent.gateway.stats import GatewayStats
from agent.gateway.upstream import StaticUpstream

CHUNK = 64 << 10


class Client:
    """A client whose body arrives in `chunks` chunks of 64 KiB (no Content-Length), then never disconnects."""

    def __init__(self, chunks: int, stall_after: int | None = None) -> None:
        self.chunks = chunks
        self.stall_after = stall_after
        self.calls = 0

    async def receive(self) -> dict[str, Any]:
        self.calls += 1
        if self.stall_after is not None and self.calls > self.stall_after:
            await asyncio.sleep(3600)
        if self.calls <= self.chunks:
            return {"type": "http.request", "body": b"x" * CHUNK, "more_body": self.calls < self.chunks}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}


def request(client: Client) -> Request:
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "raw_path": b"/v1/completions",
             "query_string": b"", "headers": [(b"host", b"localhost"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8080), "scheme": "http", "root_path": "",
             "http_version": "1.1"}
    return Request(scope, client.receive)


async def _handle(settings: GatewaySettings, client: Client, occupy: bool) -> tuple[int, AdmissionGate]:
    gate = AdmissionGate(settings.limit, settings.max_queue)
    if occupy:
        await gate.acquire(time.monotonic() + 1)  # the only slot is taken
    async with httpx.AsyncClient() as http:
        proxy = Proxy(StaticUpstream("http://127.0.0.1:9"), gate, GatewayStats(), settings, http)
        response = await proxy.handle(request(client))
    return response.status_code, gate


def test_a_client_refused_admission_is_not_read() -> None:
    """Before: the whole body (here 1 MiB, up to max_body_bytes = 32 MiB) was read before admission."""
    settings = GatewaySettings(limit=1, max_queue=0)
    client = Client(chunks=16)  # 1 MiB
    status, _gate = asyncio.run(_handle(settings, client, occupy=True))
    assert status == 503
    assert client.calls <= 1  # at most the first chunk was looked at (PEEK_BYTES), not 16


def test_a_queued_client_that_times_out_is_not_read_past_the_peek() -> None:
    settings = GatewaySettings(limit=1, max_queue=4, queue_timeout_s=0.3)
    client = Client(chunks=16)
    status, gate = asyncio.run(_handle(settings, client, occupy=True))
    assert status == 503 and client.calls <= 1 and gate.queued == 0


def test_an_admitted_body_over_the_limit_is_413_and_frees_the_slot() -> None:
    settings = GatewaySettings(limit=1, max_body_bytes=256 << 10)
    client = Client(chunks=16)
    status, gate = asyncio.run(_handle(settings, client, occupy=False))
    assert status == 413 and gate.in_flight == 0
    assert client.calls <= 5  # reading stopped just past the limit (4 chunks of 64 KiB)


def test_a_slow_body_gets_408_and_frees_the_slot() -> None:
    settings = GatewaySettings(limit=1, body_timeout_s=0.2)
    client = Client(chunks=16, stall_after=1)
    status, gate = asyncio.run(_handle(settings, client, occupy=False))
    assert status == 408 and gate.in_flight == 0
