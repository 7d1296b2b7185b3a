"""Every route declares its reply (response_model), so /openapi.json describes real replies; and declaring it changed
no reply: each one is still the daemon's own dict, key for key and in the same order."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from agent.api import create_app
from agent.api.replies import StatusReply
from agent.api.schemas import PolicyRequest
from agent.daemon.services import Services
from agent.hostfs import HostPaths
from tests.support.daemon_fixtures import ROUND_TRIP_POLICY, MainThreadClient, main_thread_client, settings_for

pytestmark = pytest.mark.usefixtures("no_daemon_env_overrides")

# Routes that answer something other than JSON, each declaring its media type in `responses=` instead.
NOT_JSON = {"metrics": "text/plain"}


def is_model(reply: Any) -> bool:
    """A pydantic model or dataclass, or a list or union of them: not a free-form dict (FastAPI takes a return
    annotation such as dict[str, Any] as the response_model, which describes nothing)."""
    if isinstance(reply, type) and (issubclass(reply, BaseModel) or dataclasses.is_dataclass(reply)):
        return True
    args = typing.get_args(reply)
    return typing.get_origin(reply) in (list, typing.Union, types.UnionType) and all(is_model(a) for a in args)


def routes_without_reply(app: FastAPI) -> list[str]:
    """'METHOD path' of every API route (included routers flattened) whose reply is not a declared model; a
    NOT_JSON route must instead declare its 200 reply's media type."""
    missing = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute):
            continue  # /openapi.json itself: a plain Starlette route
        label = f"{','.join(sorted(route.methods or ()))} {context.path}"
        if route.name in NOT_JSON:
            content = route.responses.get(200, {}).get("content", {})
            if route.response_model is not None or NOT_JSON[route.name] not in content:
                missing.append(label)
        elif not is_model(route.response_model):
            missing.append(label)
    return missing


@pytest.fixture
def client(host: HostPaths, tmp_path: Path) -> Iterator[MainThreadClient]:
    with main_thread_client(settings_for(host, tmp_path)) as c:
        yield c


def services_of(client: MainThreadClient) -> Services:
    services: Services = client.client.app.state.services  # type: ignore[attr-defined]
    return services


def as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def test_every_route_declares_its_reply(host: HostPaths, tmp_path: Path) -> None:
    settings = settings_for(host, tmp_path)
    app = create_app(settings, Services(settings))
    assert routes_without_reply(app) == []
    paths = app.openapi()["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            content = operation["responses"]["200"]["content"]
            assert content, (method, path)
            if path != "/metrics":
                assert content["application/json"]["schema"], (method, path)
            if path.startswith("/v1"):  # this API's error shape, not FastAPI's default 422
                assert operation["responses"]["422"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"}, (method, path)


def test_the_walk_finds_a_route_without_a_reply() -> None:
    router = APIRouter(prefix="/v1")

    @router.get("/bare")
    def bare() -> dict[str, Any]:  # FastAPI's response_model: dict[str, Any]
        return {}

    @router.get("/nothing")
    def nothing() -> Any:  # no response_model at all
        return {}

    @router.get("/metrics")
    def metrics() -> str:  # plain text, but its media type is not declared
        return ""

    app = FastAPI()
    app.include_router(router)
    assert routes_without_reply(app) == ["GET /v1/bare", "GET /v1/nothing", "GET /v1/metrics"]


@pytest.mark.parametrize("path, call", [
    ("/v1/host", lambda s: s.facts()),
    ("/v1/policies", lambda s: s.list_policies()),
    ("/v1/policies/llm-cpu-throughput", lambda s: s.show_policy("llm-cpu-throughput")),
    ("/v1/changes", lambda s: s.changes(200)),
    ("/v1/verify", lambda s: s.verify()),
    ("/v1/controller", lambda s: s.controller()),
    ("/v1/worker", lambda s: s.worker()),
])
def test_get_replies_are_the_daemons_dicts(client: MainThreadClient, path: str, call: Any) -> None:
    services = services_of(client)
    client.post("/v1/apply", json={"yaml": ROUND_TRIP_POLICY}).raise_for_status()  # journal, history, verify items
    reply = client.get(path)
    assert reply.status_code == 200, reply.text
    direct = as_json(call(services))
    assert reply.json() == direct
    assert json.dumps(reply.json()) == json.dumps(direct), "same keys, another order"


def test_tuning_replies_keep_the_daemons_keys(client: MainThreadClient) -> None:
    services = services_of(client)
    body = {"yaml": ROUND_TRIP_POLICY}
    planned = client.post("/v1/plan", json=body).json()
    assert json.dumps(planned) == json.dumps(as_json(services.plan(PolicyRequest.model_validate(body))))

    applied = client.post("/v1/apply", json=body).json()
    again = as_json(services.apply(PolicyRequest.model_validate(body)))  # writes nothing more: same keys
    assert list(applied) == list(again) and list(applied["changes"][0]) == list(again["changes"][0])
    assert applied["changed"] == 3 and again["changed"] == 0

    status = client.get("/v1/status").json()
    assert list(status) == list(as_json(services.status()))
    StatusReply.model_validate(status)  # served from the snapshot, not through the model: it must still match

    reverted = client.post("/v1/revert")
    assert reverted.status_code == 200, reverted.text
    assert list(reverted.json()) == list(as_json(services.revert()))  # error and detail: only in a 409
    assert "error" not in reverted.json() and "detail" not in reverted.json()
