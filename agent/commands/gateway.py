"""`hosttune gateway --upstream URL`: the OpenAI-compatible gateway on its own, in front of any llama-server."""

from __future__ import annotations

import argparse
import logging
from urllib.parse import urlsplit

from agent.errors import InputError

HELP = """\
Run the gateway in the foreground in front of a running llama-server (or any OpenAI-compatible worker).

It passes POST /v1/chat/completions, /v1/completions and llama.cpp's /completion through (streaming or not),
measures time to first token, inter-token latency, tokens and outcome per request, and enforces an admission
limit: at most --limit requests in flight to the worker, the rest wait in a FIFO queue (at most --max-queue) for
up to --queue-timeout seconds, then get 503 with Retry-After. While the worker is not ready (its /health is not
200: starting, loading, restarting) requests are held for up to the same timeout instead of failing. A request
that fails before any byte reached the client is retried once when the worker is ready again; never after.

Also served: GET /health (200 when the worker is ready), GET /metrics (Prometheus: gateway latency quantiles,
worker tokens/s, host CPU/memory, GPUs), GET /gateway/stats (JSON), GET /v1/models (passed through).
"""

EPILOG = """\
examples:
  hosttune gateway --upstream http://127.0.0.1:8081 --port 8080
  hosttune gateway --upstream http://127.0.0.1:8081 --limit 2 --queue-timeout 10
  curl -s http://127.0.0.1:8080/metrics | grep hosttune_gateway_ttft_seconds
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="run the OpenAI-compatible gateway in front of a worker URL",
                       description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", required=True, metavar="URL", help="the worker, e.g. http://127.0.0.1:8081")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (no auth!)")
    p.add_argument("--limit", type=int, default=4, help="most requests in flight to the worker (default 4)")
    p.add_argument("--max-queue", type=int, default=128, help="most requests waiting (default 128)")
    p.add_argument("--queue-timeout", type=float, default=30.0, metavar="S",
                   help="longest wait for admission or a restarting worker before 503 (default 30)")
    p.add_argument("--retry-after", type=int, default=2, metavar="S", help="Retry-After on 503 (default 2)")
    p.add_argument("--no-retry", action="store_true", help="never retry, even before the first byte")
    p.add_argument("--read-timeout", type=float, default=300.0, metavar="S",
                   help="longest silence from the worker while it answers (default 300)")
    p.add_argument("--window", type=float, default=60.0, metavar="S",
                   help="sliding window of the latency percentiles (default 60)")
    p.add_argument("--no-telemetry", action="store_true",
                   help="/metrics shows only gateway figures (no 1 Hz host/worker/GPU sampling)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def check_upstream(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"expected http://HOST:PORT, got {url!r}", field="--upstream")
    if parts.path not in ("", "/") or parts.query:
        raise InputError("give the worker's base URL without a path", field="--upstream")
    return url.rstrip("/")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from agent.gateway.app import Gateway
    from agent.gateway.server import GatewayServer
    from agent.gateway.settings import GatewaySettings
    from agent.gateway.upstream import ProbedUpstream

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    upstream = check_upstream(args.upstream)
    if not 0 <= args.port <= 65535:
        raise InputError(f"{args.port} is not a TCP port", field="--port")
    try:
        settings = GatewaySettings(limit=args.limit, max_queue=args.max_queue, queue_timeout_s=args.queue_timeout,
                                   retry_after_s=args.retry_after, retry_before_first_byte=not args.no_retry,
                                   read_timeout_s=args.read_timeout, window_s=args.window)
    except ValidationError as e:
        err = e.errors()[0]
        flag = {"limit": "--limit", "max_queue": "--max-queue", "queue_timeout_s": "--queue-timeout",
                "retry_after_s": "--retry-after", "read_timeout_s": "--read-timeout", "window_s": "--window"}
        raise InputError(err["msg"], field=flag.get(str(err["loc"][0]), str(err["loc"][0]))) from None
    endpoint = ProbedUpstream(upstream)
    gateway = Gateway(endpoint, settings)
    scheduler = None
    telemetry = None
    if not args.no_telemetry:
        from apscheduler.schedulers.background import BackgroundScheduler

        from agent.gpu.nvml import open_nvml
        from agent.telemetry.collector import build_telemetry

        telemetry = build_telemetry(endpoint=endpoint, gateway=gateway.stats, gpu=open_nvml())
        gateway.metrics_text = telemetry.exposition
        scheduler = BackgroundScheduler()
        telemetry.register_jobs(scheduler)
        scheduler.start()
    server = GatewayServer(gateway.app(), host=args.host, port=args.port, allow_remote=args.allow_remote,
                           log_level=args.log_level)
    try:
        server.run()
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if telemetry is not None:
            telemetry.close()
    return 0
