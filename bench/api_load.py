"""The daemon's API under load: C concurrent clients on loopback for D seconds, GET /v1/status with the token.

    .venv/bin/python bench/api_load.py [--clients 200] [--duration 60] [--json FILE]

The server is the real app (agent.api.create_app over agent.daemon.services.Services) under uvicorn, in its own
process (so the load generator does not share its GIL), on a copy of the fixture host tests/fixtures/hosts/
vm-1node with no GPU library: nothing on this machine is read or tuned. The clients are C asyncio tasks on one
httpx.AsyncClient (one keep-alive connection each), each sending its next request as soon as the last answered.
Reports requests, errors (any non-200 or transport error), throughput and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "hosts" / "vm-1node"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(root: Path, port: int) -> None:
    """--serve: the app on a copy of the fixture host (run in the child process)."""
    import uvicorn

    from agent.api import create_app
    from agent.config import DaemonSettings
    from agent.daemon.services import Services

    sim = root / "nvml-missing.json"
    sim.write_text('{"library": "missing"}\n')
    rootfs = root / "host" / "rootfs"
    rootfs.mkdir(exist_ok=True)
    settings = DaemonSettings.model_validate({
        "state_dir": root / "state", "procfs": root / "host" / "proc", "sysfs": root / "host" / "sys",
        "rootfs": rootfs, "nvml_sim": sim, "drift_check_s": 0})
    app = create_app(settings, Services(settings))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def load(url: str, token: str, clients: int, duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop = time.monotonic() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                 timeout=30.0) as client:
        async def one() -> None:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    r = await client.get(url)
                    ok = r.status_code == 200
                    kind = str(r.status_code)
                except httpx.HTTPError as e:
                    ok, kind = False, type(e).__name__
                latencies.append(time.perf_counter() - t0)
                if not ok:
                    errors[kind] = errors.get(kind, 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(clients)))
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
