"""A compromised worker (it runs unprivileged, the daemon as root) must not make the daemon buffer without bound:
its stdout/stderr lines, its reply headers to the gateway, an SSE event without an end, its /metrics or /slots
bodies, or the /v1/models reply the gateway relays."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import os
import signal
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.errors import HostError
from agent.gateway.app import create_app
from agent.gateway.sse import MAX_EVENT_BYTES, SSEParser, StreamTally
from agent.gateway.upstream import ProbedUpstream, StaticUpstream
from agent.gateway.upstream_client import WorkerGone, open_reply
from agent.telemetry.worker import SAMPLE_DEADLINE_S, WorkerSampler
from agent.worker.binding import plan_binding
from agent.worker.privdrop import RunAs
from agent.worker.probes import probe_health
from agent.worker.process import PIPE_LINE_MAX, pump
from agent.worker.torch_control import TorchWorkerControl
from agent.worker.torch_engine import TorchEngine
from tests.process.test_gateway_upstream_client import run as run_script
from tests.support.gateway_fakes import ServedApp


class _Sink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def test_supervisor_reads_worker_pipes_in_bounded_lines() -> None:
    """A worker writing 4 MiB without a newline is read (and logged) in pieces of at most PIPE_LINE_MAX."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    sink = _Sink()
    pump(io.BytesIO(b"x" * (4 << 20)), sink, tail, threading.Condition())  # type: ignore[arg-type]
    assert sum(map(len, sink.writes)) == 4 << 20
    assert max(map(len, sink.writes)) <= PIPE_LINE_MAX
    assert max(map(len, tail)) <= PIPE_LINE_MAX


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


class _Raw(socketserver.BaseRequestHandler):
    reply: Callable[[socket.socket, bytes], None]

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(4096)
            if not data:
                return
            head += data
        with contextlib.suppress(OSError):
            type(self).reply(self.request, head)


@contextlib.contextmanager
def raw_worker(reply: Callable[[socket.socket, bytes], None]) -> Iterator[str]:
    handler = type("H", (_Raw,), {"reply": staticmethod(reply)})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_worker_sampler_caps_the_metrics_body() -> None:
    """A 64 MiB /metrics (valid comment lines) is refused after MAX_METRICS_BYTES, not read into memory."""
    def reply(sock: socket.socket, head: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")
        line = b"# " + b"c" * 1021 + b"\n"
        for _ in range(64 * 1024):
            sock.sendall(line)

    with raw_worker(reply) as url:
        s = WorkerSampler(StaticUpstream(url), timeout_s=2.0).sample()
    assert not s.up and s.error is not None and "larger than" in s.error


def test_worker_sampler_gives_up_on_a_trickled_metrics_body() -> None:
    """One byte every 0.2 s (each read within the read timeout): the sample ends after SAMPLE_DEADLINE_S."""
    def reply(sock: socket.socket, head: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n# ")
        for _ in range(60):
            sock.sendall(b"c")
            time.sleep(0.2)

    with raw_worker(reply) as url:
        t0 = time.monotonic()
        s = WorkerSampler(StaticUpstream(url), timeout_s=1.0).sample()
        elapsed = time.monotonic() - t0
    assert not s.up and s.error is not None and "not complete" in s.error
    assert elapsed < SAMPLE_DEADLINE_S + 1.5


def test_worker_sampler_survives_hostile_slots_json() -> None:
    metrics = b"# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 1\n"

    def reply(sock: socket.socket, head: bytes) -> None:
        body = metrics if head.startswith(b"GET /metrics") else b'[{"n_ctx": Infinity}]'
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))

    with raw_worker(reply) as url:
        s = WorkerSampler(StaticUpstream(url), timeout_s=2.0).sample()
    assert not s.up and s.error


def test_gateway_passthrough_get_caps_the_worker_reply() -> None:
    """/v1/models answered with 64 MiB: the gateway stops at MAX_PASSTHROUGH_BYTES and answers 502."""
    def reply(sock: socket.socket, head: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n")
        for _ in range(1024):
            sock.sendall(b" " * 65536)

    with raw_worker(reply) as url:
        app, _gw = create_app(StaticUpstream(url))
        with ServedApp(app) as served:
            r = httpx.get(served.url + "/v1/models", timeout=30)
    assert r.status_code == 502 and "larger than" in r.text


def test_torch_token_handover_follows_no_link_the_worker_user_planted(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the token directory is the worker user's, that user can swap the token file for a symlink (to
    /etc/shadow, say): the daemon must not chown (or chmod, or write) through that name afterwards."""
    victim = tmp_path / "victim"
    victim.write_text("root:secret\n")
    chowned: list[str] = []
    real_chown = os.chown

    def chown(path: Any, uid: int, gid: int, *, follow_symlinks: bool = True) -> None:
        p = Path(path)
        chowned.append(os.path.realpath(p) if follow_symlinks else str(p))
        real_chown(path, uid, gid, follow_symlinks=follow_symlinks)
        if p.name.startswith("hosttune-torch-") or p.name == "ctl":  # the worker user races in right here
            (p / "torch-control.token").unlink()
            (p / "torch-control.token").symlink_to(victim)

    monkeypatch.setattr(os, "chown", chown)
    engine = TorchEngine(parent_death_signal=None, token_dir=tmp_path / "ctl",
                         run_as=RunAs("me", os.getuid(), os.getgid()))
    engine.token_file()
    assert str(victim) not in chowned
    assert victim.read_text() == "root:secret\n"


def test_root_shim_imports_nothing_from_the_working_directory(tmp_path: Path) -> None:
    """`sudo hosttune worker ...` started in /tmp: a local user's /tmp/agent/worker/bindexec.py must not run (the
    shim runs as root before it drops to the worker user)."""
    marker = tmp_path / "pwned"
    planted = tmp_path / "agent" / "worker"
    planted.mkdir(parents=True)
    (tmp_path / "agent" / "__init__.py").write_text("")
    (planted / "__init__.py").write_text("")
    (planted / "bindexec.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    binding = plan_binding(None, parent_death_signal=signal.SIGTERM)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([*binding.prefix, "/bin/true"], cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert not marker.exists()
    assert out.returncode == 0, out.stderr


def test_torch_control_client_caps_the_worker_reply() -> None:
    """The daemon's controller reads /control and /metrics of the torch worker: a 64 MiB or trickled reply is a
    HostError after MAX_REPLY_BYTES / the deadline, not a daemon that buffers it (or hangs on it)."""
    def huge(sock: socket.socket, head: bytes) -> None:
        sock.sendall(b"HTTP/1.1 422 Unprocessable\r\ncontent-type: application/json\r\n\r\n")
        for _ in range(1024):
            sock.sendall(b" " * 65536)

    with raw_worker(huge) as url, TorchWorkerControl(url, token="t" * 32, timeout_s=2.0) as control:
        with pytest.raises(HostError, match="larger than"):
            control.state()
        with pytest.raises(HostError, match="larger than"):
            control.stats()

    def trickle(sock: socket.socket, head: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n# ")
        for _ in range(60):
            sock.sendall(b"c")
            time.sleep(0.2)

    with raw_worker(trickle) as url, TorchWorkerControl(url, token="t" * 32, timeout_s=1.0) as control:
        t0 = time.monotonic()
        with pytest.raises(HostError, match="not complete"):
            control.stats()
        assert time.monotonic() - t0 < 4.0


def test_gateway_health_probe_reads_no_body() -> None:
    """`hosttune gateway --worker-url`: the /health probe takes the status and reads none of a trickled body
    (each byte within the probe timeout, so reading it would take 12 s)."""
    def endless(sock: socket.socket, head: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")
        for _ in range(60):
            sock.sendall(b" ")
            time.sleep(0.2)

    async def probe(url: str) -> tuple[bool, float]:
        up = ProbedUpstream(url, probe_timeout_s=2.0)
        t0 = time.monotonic()
        async with httpx.AsyncClient() as client:
            ok = await up.probe(client)
        return ok, time.monotonic() - t0

    with raw_worker(endless) as url:
        ok, elapsed = asyncio.run(probe(url))
    assert ok and elapsed < 1.5


def test_gateway_deeply_nested_body_is_passed_on_not_a_500() -> None:
    """A client's body nested 200 000 deep: the gateway's stream sniffing must not raise (RecursionError was a
    500); the body goes to the worker, which answers for it."""
    def reply(sock: socket.socket, head: bytes) -> None:
        body = b'{"error": {"message": "bad json"}}'
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n%s" % (len(body), body))

    with raw_worker(reply) as url:
        app, _gw = create_app(StaticUpstream(url))
        with ServedApp(app) as served:
            r = httpx.post(served.url + "/v1/completions", content=b"[" * 200_000, timeout=30)
    assert r.status_code == 400, r.text


def test_sse_tally_survives_deeply_nested_worker_json() -> None:
    tally = StreamTally(started=0.0, stream=True)
    tally.feed(b"data: " + b"[" * 200_000 + b"\n\n", 1.0)
    tally = StreamTally(started=0.0, stream=False)
    tally.feed(b"[" * 200_000, 1.0)
    tally.finish()
    assert tally.content_chunks == 0


def test_supervisor_health_probe_has_an_overall_deadline() -> None:
    """A worker trickling its reply head a byte at a time (each within the socket timeout) no longer holds the
    supervisor's watch thread, and so its stop and restart handling, past 2 x probe_timeout_s."""
    def trickle(sock: socket.socket, head: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nx-slow: ")
        for _ in range(60):
            sock.sendall(b"a")
            time.sleep(0.2)

    with raw_worker(trickle) as url:
        t0 = time.monotonic()
        code = probe_health(url + "/health", 0.5)
        elapsed = time.monotonic() - t0
    assert code is None and elapsed < 2.5


def test_supervisor_health_probe_is_http_only(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x")
    assert probe_health(secret.as_uri(), 0.5) is None
