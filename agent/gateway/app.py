"""The gateway's ASGI app: OpenAI-compatible routes in front of the worker, plus its own /health, /metrics and
/gateway/stats. Built by a factory so the daemon, the CLI and tests each assemble it with their own worker endpoint,
settings and telemetry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agent.gateway.admission import AdmissionGate
from agent.gateway.affinity import Shaping
from agent.gateway.levers import Levers
from agent.gateway.proxy import Proxy
from agent.gateway.settings import GatewaySettings
from agent.gateway.stats import GatewayStats
from agent.gateway.upstream import Watched, WorkerEndpoint
from agent.metrics.prom import CONTENT_TYPE, Exposition

COMPLETION_ROUTES = ("/v1/completions", "/v1/chat/completions", "/completion", "/completions", "/chat/completions")
GET_ROUTES = ("/v1/models", "/models", "/props")


class Gateway:
    """The parts a caller may want to reach after building the app (the controller: `gate.set_limit(n)`,
    `stats.sample()`)."""

    def __init__(self, endpoint: WorkerEndpoint, settings: GatewaySettings | None = None,
                 stats: GatewayStats | None = None, metrics_text: Callable[[], str] | None = None) -> None:
        self.endpoint = endpoint
        self.settings = settings or GatewaySettings()
        self.gate = AdmissionGate(self.settings.limit, self.settings.max_queue)
        self.stats = stats or GatewayStats(window_s=self.settings.window_s)
        self.stats.gauges = self.gate.gauges
        self.stats.worker_ready = endpoint.is_ready
        self.metrics_text = metrics_text
        # its own /metrics (standalone gateway): a private registry whose collector renders the stats at scrape time
        self.exposition = Exposition(lambda: self.stats.families(self.stats.sample()))
        self.levers = Levers()
        self.proxy: Proxy | None = None

    def set_limit(self, limit: int) -> None:
        self.gate.set_limit(limit)

    def configure_worker(self, shaping: Shaping, shed_budget_s: float | None) -> None:
        """The request levers for the worker now behind the gateway (agent/gateway/levers.py)."""
        self.levers.configure(shaping, shed_budget_s)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        timeout = httpx.Timeout(connect=self.settings.connect_timeout_s, read=self.settings.read_timeout_s,
                                write=30.0, pool=None)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        watcher = asyncio.ensure_future(self.endpoint.watch()) if isinstance(self.endpoint, Watched) else None
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            self.proxy = Proxy(self.endpoint, self.gate, self.stats, self.settings, client, self.levers)
            try:
                yield
            finally:
                if watcher is not None:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher

    def _proxy(self) -> Proxy:
        if self.proxy is None:
            raise RuntimeError("gateway used outside its lifespan")
        return self.proxy

    async def completion(self, request: Request) -> Response:
        return await self._proxy().handle(request)

    async def passthrough(self, request: Request) -> Response:
        return await self._proxy().passthrough_get(request)

    async def health(self, request: Request) -> Response:
        ready = self.endpoint.is_ready()
        body = {"status": "ok" if ready else "worker not ready", "worker_ready": ready,
                "in_flight": self.gate.in_flight, "queued": self.gate.queued, "limit": self.gate.limit}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(self, request: Request) -> Response:
        text = self.metrics_text() if self.metrics_text is not None else self.exposition.text()
        return PlainTextResponse(text, media_type=CONTENT_TYPE)

    async def stats_json(self, request: Request) -> Response:
        lv = self.levers
        return JSONResponse({**snapshot_dict(self.stats), "levers": {
            "slots": lv.shaping.slots, "slot_affinity": lv.shaping.affinity, "cache_prompt": lv.shaping.cache_prompt,
            "sessions": len(lv.slot_map), "shed_budget_s": lv.shed_budget_s, "shed_total": lv.shed_total,
            "service_s": lv.service.estimate(), "admission_ceiling": lv.ceiling()}})

    def app(self) -> Starlette:
        routes = [Route(p, self.completion, methods=["POST"]) for p in COMPLETION_ROUTES]
        routes += [Route(p, self.passthrough, methods=["GET"]) for p in GET_ROUTES]
        routes += [Route("/health", self.health, methods=["GET"]),
                   Route("/metrics", self.metrics, methods=["GET"]),
                   Route("/gateway/stats", self.stats_json, methods=["GET"])]
        return Starlette(routes=routes, lifespan=self.lifespan)


def snapshot_dict(stats: GatewayStats) -> dict[str, Any]:
    snap = stats.sample()
    out = asdict(snap)
    out.pop("histograms")  # cumulative buckets are for /metrics; the JSON keeps the windowed quantiles
    for name in ("ttft", "itl", "e2e", "queue_wait"):
        w = getattr(snap, name)
        out[name] = {"count": w.count, "mean": w.mean, **{f"p{int(q * 100)}": v for q, v in w.quantiles.items()}}
    return out


def create_app(endpoint: WorkerEndpoint, settings: GatewaySettings | None = None,
               metrics_text: Callable[[], str] | None = None) -> tuple[Starlette, Gateway]:
    gw = Gateway(endpoint, settings, metrics_text=metrics_text)
    return gw.app(), gw
