"""The client's side of a completion request: its body, read only once the request is admitted, and its
disconnect, watched the whole time.

Why not read the body first: a client refused admission (queue full, timed out) would have made the gateway
buffer up to max_body_bytes for nothing, and a crowd of them, all of it at once. Before admission at most
`peek_bytes` are taken from the server (enough for a typical chat request, so a queued client that leaves is
still noticed and gives its place up); then reading pauses, so the server's flow control stops reading the
socket, until the request is admitted. One task calls receive(): a body chunk is never lost to a second reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from starlette.types import Receive

PEEK_BYTES = 16 << 10


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


class ClientGone(Exception):
    pass


class ClientBody:
    def __init__(self, receive: Receive, max_bytes: int, peek_bytes: int = PEEK_BYTES) -> None:
        self.receive = receive
        self.max_bytes = max_bytes
        self.peek_bytes = peek_bytes
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.too_large = False
        self.disconnected = False
        self.admitted = asyncio.Event()
        self._changed = asyncio.Event()
        self.receive_calls = 0

    async def run(self) -> None:
        """Read until the client disconnects (or the body is too large). Cancelled by the owner when done."""
        while True:
            if not self.complete and self.size >= self.peek_bytes and not self.admitted.is_set():
                await self.admitted.wait()
            self.receive_calls += 1
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                self._changed.set()
                return
            if self.complete:
                continue
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.size > self.max_bytes:
                self.too_large = True
                self.chunks.clear()
                self._changed.set()
                return
            self.chunks.append(chunk)
            self.complete = not message.get("more_body", False)
            self._changed.set()

    async def read(self, deadline: float) -> bytes:
        """The whole body (call after admission). Raises BodyTooLarge, BodyTimeout or ClientGone."""
        self.admitted.set()
        while not self.complete:
            if self.too_large:
                raise BodyTooLarge()
            if self.disconnected:
                raise ClientGone()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BodyTimeout()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)
        return b"".join(self.chunks)
