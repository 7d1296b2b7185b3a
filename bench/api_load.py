"""The daemon's API under load: C concurrent clients on loopback for D seconds, GET /v1/status with the token.

    .venv/bin/python bench/api_load.py [--clients 200] [--duration 60] [--json FILE]

The server is the real app (agent.api.create_app over agent.daemon.services.Services) under uvicorn as the daemon
runs it (agent.daemon.http.ServerThread), in its own process (so the load generator does not share its GIL), on a
copy of the fixture host tests/fixtures/hosts/vm-1node with no GPU library: nothing on this machine is read or
tuned. PYTHONPATH picks the code under test (a side-by-side run points it at an export of the old commit). The
clients are C asyncio tasks, one keep-alive connection each (a minimal HTTP/1.1 client on asyncio streams: httpx
cost more CPU than the server), each sending its next request as soon as the last answered. Reports requests,
errors (any non-200 or transport error), throughput and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from agent.bench.llama_local import free_port

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "hosts" / "vm-1node"


def serve(root: Path, port: int) -> None:
    """--serve: the app on a copy of the fixture host (run in the child process), served the way the daemon
    serves it (agent.daemon.http.ServerThread: its socket, its uvicorn settings and request limits)."""
    from agent.api import create_app
    from agent.config import DaemonSettings
    from agent.daemon.http import ServerThread, bind_tcp
    from agent.daemon.services import Services

    sim = root / "nvml-missing.json"
    sim.write_text('{"library": "missing"}\n')
    rootfs = root / "host" / "rootfs"
    rootfs.mkdir(exist_ok=True)
    settings = DaemonSettings.model_validate({
        "state_dir": root / "state", "procfs": root / "host" / "proc", "sysfs": root / "host" / "sys",
        "rootfs": rootfs, "nvml_sim": sim, "drift_check_s": 0})
    server = ServerThread(create_app(settings, Services(settings)), bind_tcp("127.0.0.1", port), "api")
    server.start()
    threading.Event().wait()  # until the parent's SIGTERM


async def _raw_client(host: str, port: int, request: bytes, stop: float, latencies: list[float],
                      errors: dict[str, int]) -> None:
    """One keep-alive connection sending `request` back to back: a minimal HTTP/1.1 client on asyncio streams, so
    the load generator costs far less CPU than the server it measures (httpx did not: see docs/benchmarks.md)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30.0)
                status = head[9:12].decode()
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await asyncio.wait_for(reader.readexactly(length), 30.0)
                kind = status
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as e:
                kind = type(e).__name__
            latencies.append(time.perf_counter() - t0)
            if kind != "200":
                errors[kind] = errors.get(kind, 0) + 1
                if not kind.isdigit():
                    return
    finally:
        writer.close()


async def load(url: str, token: str, clients: int, duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    parts = httpx.URL(url)
    host, port = parts.host, parts.port or 80
    request = (f"GET {parts.raw_path.decode()} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
    stop = time.monotonic() + duration
    started = time.monotonic()
    await asyncio.gather(*(_raw_client(host, port, request, stop, latencies, errors) for _ in range(clients)))
    elapsed = time.monotonic() - started
    q = statistics.quantiles(latencies, n=1000) if len(latencies) > 1 else [0.0] * 999
    return {"clients": clients, "duration_s": round(elapsed, 1), "requests": len(latencies),
            "errors": sum(errors.values()), "error_kinds": errors, "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(q[499] * 1000, 1), "p99_ms": round(q[989] * 1000, 1),
            "max_ms": round(max(latencies) * 1000, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    with tempfile.TemporaryDirectory(prefix="api-load-") as d:
        root = Path(d)
        shutil.copytree(FIXTURE, root / "host", symlinks=True)
        port = free_port()
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(root), "--port", str(port)])
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the API did not come up")
                time.sleep(0.2)
            token = (root / "state" / "api.token").read_text().strip()
            result = asyncio.run(load(f"{base}/v1/status", token, args.clients, args.duration))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
