"""GET /v1/worker and POST /v1/worker/restart: the supervised inference worker."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from agent.api.deps import Audit, Services
from agent.api.replies import WorkerReply

router = APIRouter(prefix="/worker", tags=["worker"])


@router.get("", summary="worker state, pid, placement, restarts, last exit reason", response_model=WorkerReply)
def worker(services: Services) -> dict[str, Any]:
    return services.worker()


@router.post("/restart", summary="restart the worker (gateway holds requests meanwhile)",
             response_model=WorkerReply)
def restart(services: Services, audit: Audit) -> dict[str, Any]:
    result = services.restart_worker()
    audit["state"] = result.get("state")
    return result
