"""Bearer-token authentication for every /v1 route (a router-level dependency, constant-time compare).

The token file itself (creation 0600, refusal of a readable one) is agent/api/tokenfile.py.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agent.api.tokenfile import MIN_TOKEN_CHARS, ensure_token

__all__ = ["MIN_TOKEN_CHARS", "ensure_token", "refusal", "refusal_before_body", "require_token"]

_bearer = HTTPBearer(auto_error=False, description="the token in the daemon's token file (api.token)")


def require_token(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Router-level dependency: 401 unless `Authorization: Bearer <token>` matches (constant-time compare)."""
    refused = refusal(request, credentials)
    if refused is not None:
        raise refused


def refusal(request: Request, credentials: HTTPAuthorizationCredentials | None) -> HTTPException | None:
    """Why a request's credentials are refused (None: they are good)."""
    expected: str | None = getattr(request.app.state, "token", None)
    if expected is None:
        return HTTPException(503, "the API token is not loaded yet")
    if credentials is None or credentials.scheme.lower() != "bearer":
        return HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        return HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    return None


async def refusal_before_body(request: Request) -> HTTPException | None:
    """FastAPI parses a JSON body before it runs the router's dependencies, so a malformed body would answer 422
    to a caller without a token. The validation handler asks this first: unauthenticated callers get 401 on /v1,
    whatever their body."""
    if not request.url.path.startswith("/v1"):
        return None
    return refusal(request, await _bearer(request))
