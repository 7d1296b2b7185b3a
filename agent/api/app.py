"""The FastAPI application factory: routers assembled in one place, auth at the router level, a lifespan.

`create_app(settings, services)` builds a fresh app (nothing happens at import). The lifespan loads the token
(creating the file on first start, refusing a group/world-readable one) and opens the audit log; both are kept on
`app.state`. Every route under /v1 depends on the bearer token; /healthz and /openapi.json do not, and /metrics
only needs the scrape token when `api.metrics_token_file` is set (never the API token: a scraper cannot retune).
The interactive docs pages are off: they load scripts from a CDN, and the API is for programs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import iter_route_contexts

from agent import __version__
from agent.api.audit import AuditLog, AuditMiddleware
from agent.api.auth import TokenFirstMiddleware, ensure_token, metrics_token, require_token
from agent.api.deps import HostServices
from agent.api.errors import install_error_handlers
from agent.api.limits import BodyLimitMiddleware
from agent.api.replies import ERROR_RESPONSES
from agent.api.routers import controller, health, host, performance, policies, telemetry, tuning, worker
from agent.api.snapshot import Snapshot, SnapshotReads
from agent.config import DaemonSettings

V1_ROUTERS = (host.router, policies.router, tuning.router, telemetry.router, controller.router, worker.router,
              performance.router)


def route_table(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route, flattening included routers (FastAPI keeps them lazy)."""
    table = []
    for route in iter_route_contexts(app.routes):
        for method in sorted(getattr(route, "methods", None) or ()):
            table.append((method, str(route.path)))
    return table


def v1_router() -> APIRouter:
    """All resource routers under /v1, each route requiring the bearer token."""
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)
    for router in V1_ROUTERS:
        v1.include_router(router)
    return v1


def create_app(settings: DaemonSettings, services: HostServices) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.token = ensure_token(settings.token_path)
        app.state.metrics_token = metrics_token(settings.api.metrics_token_file, app.state.token)
        app.state.status_snapshot = Snapshot(services.status, services.state_generation)  # its lock: this loop's
        app.state.audit = AuditLog(settings.audit_path, max_bytes=settings.audit_max_bytes, keep=settings.audit_keep)
        try:
            yield
        finally:
            app.state.audit.close()

    app = FastAPI(title="hosttune", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Inspect, tune and supervise an LLM inference host. Every /v1 route needs "
                              "`Authorization: Bearer <token>` (the daemon's token file).")
    app.state.services = services
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(v1_router())
    # Added last = outermost. The audit record also covers requests the token check or the body limit refuse;
    # the token is checked before the body limit reads (buffers) a body.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api.max_body_bytes)
    app.add_middleware(SnapshotReads)  # GET /v1/status from the snapshot, once the token is checked
    app.add_middleware(TokenFirstMiddleware)
    app.add_middleware(AuditMiddleware)
    return app
