"""Test doubles for the gateway: a real local HTTP server that behaves like llama-server's HTTP surface with
controlled delays and failures, and a helper that serves an ASGI app with uvicorn in a thread.

The fake worker is a raw asyncio server (HTTP/1.1, one request per connection) rather than an ASGI app so a test
can kill it the way a crashed llama-server dies: listening socket closed and every open connection reset.
Per-request behaviour comes from a `fake` object in the request JSON: {"ttft_s", "itl_s", "tokens", "usage",
"die_after"} (die_after=k: reset the connection after k content chunks; 0 = before any byte).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from agent.bench.llama_local import free_port


@dataclass
class FakeWorkerState:
    ready: bool = True
    ttft_s: float = 0.02
    itl_s: float = 0.01
    tokens: int = 5
    usage: bool = True
    requests: int = 0
    active: int = 0
    max_active: int = 0
    disconnects: int = 0                       # clients that went away before the reply ended
    die_next: list[int] = field(default_factory=list)   # die_after for the next requests, consumed in order
    prompt_tokens_total: int = 0
    predicted_tokens_total: int = 0
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)   # request headers of each POST
    bodies: list[dict[str, Any]] = field(default_factory=list)    # request body of each POST, as the worker got it
    silent_close: bool = False     # like llama-server: close after a streamed reply without "connection: close"
    bodies: list[dict[str, Any]] = field(default_factory=list)    # request JSON of each POST
    tag_replies: bool = False      # reply words carry the request's number ("r3w0 r3w1 ..."): tell replies apart


class FakeWorker:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.state = FakeWorkerState()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> FakeWorker:
        async def go() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self._call(go())
        return self

    def kill(self) -> None:
        """Die like a crashed process: stop listening and reset every open connection."""
        async def go() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()
        self._call(go())

    def close(self) -> None:
        self.kill()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        st = self.state
        st.paths.append(path)
        if method == "GET":
            await self._get(path, writer)
            return
        req = json.loads(body or b"{}")
        st.headers.append(headers)
        st.bodies.append(req)
        fake = req.get("fake", {})
        st.requests += 1
        st.active += 1
        st.max_active = max(st.max_active, st.active)
        try:
            await self._generate(path, req, fake, reader, writer)
        finally:
            st.active -= 1

    async def _get(self, path: str, writer: asyncio.StreamWriter) -> None:
        st = self.state
        if path == "/health":
            status, body = (200, b'{"status":"ok"}') if st.ready else (503, b'{"error":{"message":"Loading model"}}')
        elif path in ("/v1/models", "/models"):
            status, body = 200, json.dumps({"object": "list", "data": [{"id": "fake-model"}]}).encode()
        elif path == "/metrics":
            text = (
                "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed\n"
                "# TYPE llamacpp:prompt_tokens_total counter\n"
                f"llamacpp:prompt_tokens_total {st.prompt_tokens_total}\n"
                "# HELP llamacpp:tokens_predicted_total Number of generation tokens processed\n"
                "# TYPE llamacpp:tokens_predicted_total counter\n"
                f"llamacpp:tokens_predicted_total {st.predicted_tokens_total}\n"
                "# TYPE llamacpp:requests_processing gauge\n"
                f"llamacpp:requests_processing {st.active}\n"
                "# TYPE llamacpp:requests_deferred gauge\n"
                "llamacpp:requests_deferred 0\n")
            await self._reply(writer, 200, text.encode(), "text/plain; version=0.0.4")
            return
        elif path == "/slots":
            slots = [{"id": i, "n_ctx": 512, "is_processing": i < st.active} for i in range(4)]
            status, body = 200, json.dumps(slots).encode()
        else:
            status, body = 404, b'{"error":"not found"}'
        await self._reply(writer, status, body)

    async def _reply(self, writer: asyncio.StreamWriter, status: int, body: bytes,
                     ctype: str = "application/json") -> None:
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
                     f"connection: close\r\n\r\n".encode() + body)
        await writer.drain()

    async def _generate(self, path: str, req: dict[str, Any], fake: dict[str, Any],
                        reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        st = self.state
        tag = f"r{st.requests}" if st.tag_replies else ""  # read before any await: this request's number
        if not st.ready:
            await self._reply(writer, 503, b'{"error":{"code":503,"message":"Loading model"}}')
            return
        n = int(fake.get("tokens", st.tokens))
        ttft, itl = float(fake.get("ttft_s", st.ttft_s)), float(fake.get("itl_s", st.itl_s))
        usage = bool(fake.get("usage", st.usage))
        die_after = fake.get("die_after", st.die_next.pop(0) if st.die_next else None)
        stream = bool(req.get("stream"))
        st.prompt_tokens_total += 7
        await asyncio.sleep(ttft)
        if die_after == 0:
            writer.transport.abort()
            return
        words = [f"{tag}w{i} " for i in range(n)]
        if not stream:
            await asyncio.sleep(itl * max(n - 1, 0))
            st.predicted_tokens_total += n
            await self._reply(writer, 200, json.dumps(self._full(path, "".join(words), n, usage)).encode())
            return
        close = b"" if st.silent_close else b"connection: close\r\n"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                     + close + b"\r\n")
        gone = asyncio.ensure_future(reader.read(1))  # EOF when the client (gateway) closes the connection

        async def chunk(payload: bytes) -> bool:
            if gone.done():
                return False
            writer.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            await writer.drain()
            return True

        try:
            if path.endswith("chat/completions"):
                await chunk(self._event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]}))
            for i, w in enumerate(words):
                if i > 0:
                    await asyncio.sleep(itl)
                if die_after is not None and i == die_after:
                    writer.transport.abort()
                    return
                if not await chunk(self._event(self._delta(path, w))):
                    st.disconnects += 1
                    return
                st.predicted_tokens_total += 1
            await chunk(self._event(self._final(path, n, usage)))
            await chunk(b"data: [DONE]\n\n")
            await chunk(b"")
        finally:
            gone.cancel()

    @staticmethod
    def _event(obj: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    @staticmethod
    def _delta(path: str, word: str) -> dict[str, Any]:
        if path.endswith("chat/completions"):
            return {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
        if path.endswith("completions"):
            return {"choices": [{"index": 0, "text": word, "finish_reason": None}]}
        return {"index": 0, "content": word, "stop": False, "tokens_predicted": 0, "tokens_evaluated": 7}

    @staticmethod
    def _final(path: str, n: int, usage: bool) -> dict[str, Any]:
        if path == "/completion":
            return {"index": 0, "content": "", "stop": True, "tokens_predicted": n, "tokens_evaluated": 7}
        obj: dict[str, Any] = {"choices": [{"index": 0, "delta": {}, "text": "", "finish_reason": "length"}]}
        if usage:
            obj["usage"] = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
        return obj

    @staticmethod
    def _full(path: str, text: str, n: int, usage: bool) -> dict[str, Any]:
        if path == "/completion":
            return {"content": text, "stop": True, "tokens_predicted": n, "tokens_evaluated": 7}
        choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": text}}
                                  if path.endswith("chat/completions") else {"index": 0, "text": text})
        obj: dict[str, Any] = {"choices": [choice]}
        if usage:
            obj["usage"] = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
        return obj


class ServedApp:
    """An ASGI app served by a real uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any) -> None:
        self.config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                     timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServedApp:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextlib.contextmanager
def fake_worker() -> Iterator[FakeWorker]:
    w = FakeWorker().start()
    try:
        yield w
    finally:
        w.close()
