"""GET /v1/controller: the controller's decisions with their before/after measurements (empty until it runs)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from agent.api.deps import Services
from agent.api.replies import ControllerReply

router = APIRouter(tags=["controller"])


@router.get("/controller", summary="controller decisions and the measurements behind them",
            response_model=ControllerReply, response_model_exclude_unset=True)
def controller(services: Services) -> dict[str, Any]:
    return services.controller()
