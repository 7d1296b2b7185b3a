"""GET /v1/host: the host facts (the same document as `hosttune inspect --json`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from agent.api.deps import Services
from agent.inspect.models import HostFacts

router = APIRouter(tags=["host"])


@router.get("/host", summary="host facts (hosttune inspect --json)", response_model=HostFacts)
def host(services: Services) -> Any:
    return services.facts()
