"""One JSON error shape for every failure: {"error": <kind>, "detail": <one line>, ...where it was}.

InputError keeps the file:line and field the loaders found (a policy submitted in a request body names the body),
so an API user gets the same message the CLI prints. Unexpected exceptions are logged with their traceback and
answered with a short 500 that leaks no internals.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.api.auth import refusal_before_body
from agent.api.exceptions import Conflict, NotFound, Unavailable
from agent.errors import HostTuneError, InputError

__all__ = ["Conflict", "NotFound", "Unavailable", "error_body", "install_error_handlers", "status_for"]

log = logging.getLogger(__name__)

_HTTP_KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "request_too_large", 503: "unavailable"}


def status_for(exc: HostTuneError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, InputError):
        return 422
    if isinstance(exc, Unavailable):
        return 503
    if isinstance(exc, Conflict):
        return 409
    return 500


def kind_for(exc: HostTuneError) -> str:
    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, InputError):
        return "invalid_input"
    if isinstance(exc, Unavailable):
        return "unavailable"
    if isinstance(exc, Conflict):
        return "conflict"
    return "host_error"


def error_body(exc: HostTuneError) -> dict[str, object]:
    body: dict[str, object] = {"error": kind_for(exc), "detail": str(exc)}
    where = {k: v for k, v in (("path", exc.path), ("line", exc.line), ("field", exc.field)) if v is not None}
    if where:
        body["where"] = where
    return body


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HostTuneError)
    async def _hosttune(request: Request, exc: HostTuneError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=status_for(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        refused = await refusal_before_body(request)
        if refused is not None:
            return await _http(request, refused)
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        detail = f"{field}: {msg}" if field else msg
        return JSONResponse({"error": "invalid_request", "detail": detail, "where": {"field": field}},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code not in (401, 403, 413):
            # FastAPI answers 400 for a body it cannot parse before the router's auth dependency runs: a caller
            # without the token gets 401 on /v1 whatever its body.
            refused = await refusal_before_body(request)
            if refused is not None and refused.status_code != exc.status_code:
                exc = refused
        return JSONResponse({"error": _HTTP_KINDS.get(exc.status_code, "http_error"), "detail": str(exc.detail)},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal_error", "detail": f"{type(exc).__name__}; see the daemon log"},
                            status_code=500)
