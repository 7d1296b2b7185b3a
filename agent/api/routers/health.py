"""Probes without the API token: /healthz for liveness checks and /metrics for Prometheus scrapers.

Both are read-only. /metrics also carries info series (the applied policy's name and digest, the model file and
engine knobs, the hosttune version, GPU UUIDs), so it is open only while `api.metrics_token_file` is unset, and
then only to who reaches the API: a remote API (allow_remote, non-loopback host) refuses to load without that
scrape token (agent/config.py), which agent/api/auth.py then requires — never the API token itself.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from agent.api.deps import Services
from agent.api.replies import Health

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="liveness: the daemon answers and its parts' states", response_model=Health)
def healthz(services: Services) -> dict[str, Any]:
    return services.health()


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus text exposition",
            responses={200: {"description": "Prometheus text format 0.0.4",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(services: Services) -> PlainTextResponse:
    return PlainTextResponse(services.metrics(), media_type=PROMETHEUS_CONTENT_TYPE)
