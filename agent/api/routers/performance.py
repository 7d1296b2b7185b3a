"""GET /v1/performance: p95 TTFT, ITL and output tokens/s over the last N seconds (the rollout's performance gate)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from agent.api.deps import Services
from agent.api.replies import PerformanceReply

router = APIRouter(tags=["telemetry"])


@router.get("/performance", summary="what the gateway served in the last N seconds, under the policy in force",
            response_model=PerformanceReply)
def performance(services: Services, seconds: Annotated[float, Query(gt=0, le=3600)] = 60) -> dict[str, Any]:
    return services.performance(seconds)
