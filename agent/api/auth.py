"""Bearer-token authentication for every /v1 route (a router-level dependency, constant-time compare), and for
/metrics with the separate scrape token when `api.metrics_token_file` is set.

The token file itself (creation 0600, refusal of a readable one) is agent/api/tokenfile.py.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from agent.api.audit import AUTHENTICATED_KEY
from agent.api.tokenfile import MIN_TOKEN_CHARS, ensure_token, read_metrics_token

__all__ = ["MIN_TOKEN_CHARS", "TokenFirstMiddleware", "ensure_token", "metrics_token", "refusal",
           "refusal_before_body", "require_token"]
METRICS_PATH = "/metrics"

_bearer = HTTPBearer(auto_error=False, description="the token in the daemon's token file (api.token)")


async def require_token(request: Request,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Router-level dependency: 401 unless `Authorization: Bearer <token>` matches (constant-time compare)."""
    refused = refusal(request, credentials)
    if refused is not None:
        raise refused


def refusal(request: Request, credentials: HTTPAuthorizationCredentials | None) -> HTTPException | None:
    """Why a request's credentials are refused (None: they are good)."""
    presented = None if credentials is None else f"{credentials.scheme} {credentials.credentials}"
    return token_refusal(getattr(request.app.state, "token", None), presented)


def token_refusal(expected: str | None, authorization: str | None) -> HTTPException | None:
    """Why an Authorization header value is refused (None: it carries the token)."""
    if expected is None:
        return HTTPException(503, "the API token is not loaded yet")
    scheme, _, presented = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        return HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    return None


def metrics_token(path: Path | None, api_token: str) -> str | None:
    """The scrape token /metrics requires (None: /metrics is open to whoever reaches the API), from a 0600 file
    the daemon never creates; refused when it holds the API token."""
    return read_metrics_token(path, api_token)


def is_v1(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


class TokenFirstMiddleware:
    """Checks the token of every /v1 request before anything reads its body (the body limit buffers up to
    api.max_body_bytes; a caller without the token must not make the daemon do that)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: Any = getattr(scope.get("app"), "state", None)
        scrape_token = getattr(state, "metrics_token", None)
        if is_v1(scope["path"]):
            refused = token_refusal(getattr(state, "token", None), _authorization(scope))
            if refused is not None:
                await _answer(send, refused)
                return
            scope[AUTHENTICATED_KEY] = True
        elif scope["path"] == METRICS_PATH and scrape_token is not None:
            # Only the scrape token opens /metrics: the API token (which can retune the host) is not asked for.
            refused = token_refusal(scrape_token, _authorization(scope))
            if refused is not None:
                await _answer(send, refused)
                return
        await self.app(scope, receive, send)


def _authorization(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None


async def _answer(send: Send, refused: HTTPException) -> None:
    kind = "unauthorized" if refused.status_code == 401 else "unavailable"
    body = json.dumps({"error": kind, "detail": refused.detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (refused.headers or {}).items()]
    await send({"type": "http.response.start", "status": refused.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def refusal_before_body(request: Request) -> HTTPException | None:
    """FastAPI parses a JSON body before it runs the router's dependencies, so a malformed body would answer 422
    to a caller without a token. The validation handler asks this first: unauthenticated callers get 401 on /v1,
    whatever their body."""
    if not is_v1(request.url.path):
        return None
    return refusal(request, await _bearer(request))
