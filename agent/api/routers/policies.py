"""GET /v1/policies and /v1/policies/{name}: what can be applied, and a policy resolved against this host."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from agent.api.deps import Services
from agent.api.replies import NOT_FOUND, PolicyShown
from agent.api.schemas import POLICY_NAME_PATTERN
from agent.policy.loader import PolicyInfo

router = APIRouter(prefix="/policies", tags=["policies"])


@router.get("", summary="policies on the daemon's search path", response_model=list[PolicyInfo])
def list_policies(services: Services) -> list[dict[str, Any]]:
    return services.list_policies()


@router.get("/{name}", summary="one policy, resolved against this host, with where each value came from",
            response_model=PolicyShown, responses=NOT_FOUND)
def show_policy(services: Services, name: Annotated[str, Path(pattern=POLICY_NAME_PATTERN)]) -> dict[str, Any]:
    return services.show_policy(name)
