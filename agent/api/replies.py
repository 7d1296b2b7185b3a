"""Reply bodies: the `response_model` of every route, so /openapi.json describes what each route answers.

Each reply is the model of the data it carries (the engine's Plan, ApplyResult, RevertResult, VerifyResult and
Status, HostFacts, WorkerStatus, the controller's Decision, PolicyInfo and Policy), plus the few keys the daemon
adds to it (counts, summary, ok, changed, drifted, daemon). Where the engine's model already names such a key as a
method or property (Plan.summary(), VerifyResult.ok), the reply is built from its fields (`extended`) rather than
subclassed, which would shadow them. Routes whose reply has optional keys set `response_model_exclude_unset`, so a
key the daemon did not send is not added as null: the JSON stays what the daemon built.

Kept apart from agent.api.schemas (request bodies): the daemon imports those before it starts the web stack, and
these pull in the engine's, worker's and controller's models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from agent.control.decisions import Decision
from agent.policy.model import Policy
from agent.tuning.api import Status
from agent.tuning.plan import Plan
from agent.tuning.revert import RevertResult
from agent.tuning.transaction import ApplyResult
from agent.tuning.verify import VerifyItem, VerifyResult
from agent.worker.status import WorkerStatus


def extended(base: type[BaseModel], name: str, doc: str, **added: Any) -> type[BaseModel]:
    """A model with `base`'s fields (the same annotations, defaults and descriptions) followed by `added`
    (name=(type, Field(...)), as for pydantic.create_model)."""
    fields: dict[str, Any] = {key: (info.annotation, info) for key, info in base.model_fields.items()}
    model: type[BaseModel] = create_model(name, __doc__=doc, __module__=__name__, **fields, **added)
    return model


class ErrorBody(BaseModel):
    """Every failure (agent/api/errors.py): a kind, one line, and where the loaders found the problem."""

    error: str = Field(description="not_found, invalid_input, invalid_request, conflict, unavailable, unauthorized, "
                                   "forbidden, request_too_large, host_error, internal_error, ...")
    detail: str
    where: dict[str, str | int] | None = Field(None, description="path, line and field, when known")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in (
        (401, "no or a malformed bearer token"), (403, "a wrong token"),
        (413, "a body over the daemon's limit"), (422, "bad input, naming the field (and file:line)"),
        (500, "an unexpected error (logged by the daemon)"),
        (503, "a part this request needs is not installed or does not run in this daemon"))}
"""The error replies of every /v1 route (replacing FastAPI's own 422 shape, which this API does not send)."""

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no policy by that name on the search path"}}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "another transaction holds the host"}}


class Health(BaseModel):
    status: Literal["ok"]
    uptime_s: float
    worker: str | None = Field(description="the worker's state, or 'disabled'")
    policy: str | None = Field(description="the policy the daemon applied (None: none since it started)")


class PolicyShown(BaseModel):
    policy: Policy = Field(description="the policy resolved against this host")
    source: str
    chain: list[str] = Field(description="extends chain, base first, the source last")
    locations: dict[str, str] = Field(description="dotted field -> file:line its value came from")


PlanReply = extended(Plan, "PlanReply", "What applying a policy would change.",
                     counts=(dict[str, int], Field(description="changes per action")),
                     summary=(str, Field(description="the counts as one line")))

RevertReply = extended(
    RevertResult, "RevertReply", "What revert restored; on 409, what it left (with error and detail).",
    ok=(bool, Field(description="nothing failed and nothing was skipped")),
    error=(Literal["conflict"] | None, Field(None, description="409 only")),
    detail=(str | None, Field(None, description="409 only: what to do about the skipped targets")))

VerifyReply = extended(VerifyResult, "VerifyReply", "Drift of the applied policy.",
                       ok=(bool, Field(description="nothing drifted and no transaction is open")),
                       drifted=(list[VerifyItem], Field(description="the items that drifted or are unknown")),
                       summary=(str, Field(description="the counts as one line")))


class ApplyReply(ApplyResult):
    changed: int = Field(description="host writes made (the same as writes)")


class DaemonInfo(BaseModel):
    started_at: float
    policy_ref: str | None
    last_drift_check: dict[str, Any] | None
    events: list[dict[str, Any]] = Field(description="the latest events (apply, revert, drift, worker_start, ...)")


class StatusReply(Status):
    daemon: DaemonInfo


class WorkerDisabled(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["disabled"]
    reason: str


WorkerReply = WorkerStatus | WorkerDisabled


class TelemetryReply(BaseModel):
    interval_s: float
    count: int
    samples: list[dict[str, Any]] = Field(description="host, worker, gateway and GPU readings, oldest first")


class PerformanceReply(BaseModel):
    """What the gateway served in the last N seconds, under the policy and the worker in force now only
    (agent/gateway/performance.py). Counted: requests that started and finished inside the window."""

    seconds: float = Field(description="the window asked for")
    serving: bool = Field(description="a worker runs behind the gateway (false: nothing to measure)")
    worker_ready: bool = Field(description="the worker answers now (false while it starts or restarts)")
    policy: str | None = Field(description="the policy whose worker serves (None: no worker)")
    now: float = Field(description="Unix time of this reading (the host's clock, as `since`)")
    since: float = Field(description="Unix time the window opens: the latest of now - seconds, the policy taking "
                                     "over and the worker becoming ready")
    window_s: float = Field(description="seconds from `since` to now (less than `seconds` after a change)")
    covered_s: float = Field(description="seconds the figures cover (less than window_s when truncated)")
    truncated: bool = Field(description="the gateway's record buffer does not reach back to `since`")
    requests: int = Field(description="requests finished ok")
    failed: int = Field(description="requests finished with an error or a timeout")
    rejected: int = Field(description="requests refused by admission")
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    itl_p95_s: float | None
    e2e_p95_s: float | None
    output_tokens: int
    output_tokens_per_second: float | None = Field(description="output tokens over covered_s")


class ControllerReply(BaseModel):
    """Either enabled with the controller's status, or not with the reason; both with the decisions."""

    enabled: bool
    reason: str | None = Field(None, description="why the controller does not run (when not enabled)")
    status: dict[str, Any] | None = Field(None, description=(
        "the controller's state (when enabled); trial.from/to: knobs; os_trial: an OS trial's targets from/to"))
    decisions: list[Decision]
