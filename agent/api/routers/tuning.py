"""The tuning transaction resource: plan (writes nothing), apply, revert, status, journal history, verify.

Routes are plain `def`: they read and write sysfs/procfs (blocking), so FastAPI runs them in its thread pool and
the event loop keeps serving /healthz. Mutations say what they did in the audit record. The exception is
/status, read often and by many: an async route over a cached snapshot.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from agent.api.deps import Audit, Services
from agent.api.replies import CONFLICT, NOT_FOUND, ApplyReply, PlanReply, RevertReply, StatusReply, VerifyReply
from agent.api.schemas import PolicyRequest, RevertRequest
from agent.api.snapshot import Snapshot
from agent.tuning.journal import HistoryEntry

router = APIRouter(tags=["tuning"])


def _describe(request: PolicyRequest) -> str:
    if request.name is not None:
        return request.name
    return "inline-yaml" if request.yaml is not None else "inline-json"


@router.post("/plan", summary="what applying a policy would change (writes nothing)", response_model=PlanReply,
             responses=NOT_FOUND)
def plan(services: Services, request: PolicyRequest, audit: Audit) -> dict[str, Any]:
    audit["policy"] = _describe(request)
    return services.plan(request)


@router.post("/apply", summary="apply a policy as one crash-safe transaction", response_model=ApplyReply,
             responses={**NOT_FOUND, **CONFLICT})
def apply(services: Services, request: PolicyRequest, audit: Audit) -> dict[str, Any]:
    audit["policy"] = _describe(request)
    result = services.apply(request)
    audit["changed"] = result.get("changed")
    return result


@router.post("/revert", summary="restore every original value from the journal", response_model=RevertReply,
             response_model_exclude_unset=True,  # error and detail: only in a 409
             responses={409: {"model": RevertReply,
                              "description": "some targets were changed by someone else since hosttune set them: "
                                             "left as is and listed in `skipped` (the rest was reverted)"}})
def revert(services: Services, audit: Audit, response: Response,
           request: RevertRequest | None = None) -> dict[str, Any]:
    force = request is not None and request.force
    result = services.revert(force=force)
    audit["restored"] = len(result.get("restored") or [])
    if force:
        audit["force"] = True
    skipped = result.get("skipped") or []
    if skipped:
        audit["skipped"] = len(skipped)
        response.status_code = 409
        result.update(error="conflict", detail=f"{len(skipped)} target(s) changed by someone else since hosttune "
                                               f"set them were left as is; send {{\"force\": true}} to restore them")
    return result


@router.get("/status", summary="applied policy, when, and the journal's state", response_model=StatusReply)
async def status(request: Request) -> Response:
    """Async over the cached snapshot (agent/api/snapshot.py): concurrent readers share one computation."""
    snapshot: Snapshot = request.app.state.status_snapshot
    return Response(await snapshot.get(), media_type="application/json")


@router.get("/changes", summary="journal history, newest first", response_model=list[HistoryEntry])
def changes(services: Services, limit: Annotated[int, Query(ge=1, le=10000)] = 200) -> list[dict[str, Any]]:
    return services.changes(limit)


@router.get("/verify", summary="drift: does the host still hold the applied policy?", response_model=VerifyReply)
def verify(services: Services) -> dict[str, Any]:
    return services.verify()
