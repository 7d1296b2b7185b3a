"""GET /v1/telemetry: recent samples from the telemetry ring buffer (host, worker, gateway)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from agent.api.deps import Services
from agent.api.replies import TelemetryReply

router = APIRouter(tags=["telemetry"])


@router.get("/telemetry", summary="samples of the last N seconds", response_model=TelemetryReply)
def telemetry(services: Services, seconds: Annotated[float, Query(gt=0, le=3600)] = 60) -> dict[str, Any]:
    return services.telemetry(seconds)
