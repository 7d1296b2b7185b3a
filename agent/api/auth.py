"""Bearer-token authentication for every /v1 route (a router-level dependency, constant-time compare).

The token file itself (creation 0600, refusal of a readable one) is agent/api/tokenfile.py.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agent.api.tokenfile import MIN_TOKEN_CHARS, ensure_token

__all__ = ["MIN_TOKEN_CHARS", "ensure_token", "require_token"]

_bearer = HTTPBearer(auto_error=False, description="the token in the daemon's token file (api.token)")


def require_token(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Router-level dependency: 401 unless `Authorization: Bearer <token>` matches (constant-time compare)."""
    expected: str | None = getattr(request.app.state, "token", None)
    if expected is None:
        raise HTTPException(503, "the API token is not loaded yet")
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
