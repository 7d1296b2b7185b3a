"""GET /v1/controller: the controller's decisions with their before/after measurements (empty until it runs)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from agent.api.deps import Services

router = APIRouter(tags=["controller"])


@router.get("/controller", summary="controller decisions and the measurements behind them")
def controller(services: Services) -> dict[str, Any]:
    return services.controller()
