"""GET /v1/host: the host facts (the same document as `hosttune inspect --json`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from agent.api.deps import Services

router = APIRouter(tags=["host"])


@router.get("/host", summary="host facts (hosttune inspect --json)")
def host(services: Services) -> Any:
    return services.facts()
