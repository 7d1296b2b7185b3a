"""Errors the API maps to HTTP statuses (404, 503, 409), importable without FastAPI (the daemon's services raise
them; the daemon imports the web stack only after the policy is applied)."""

from __future__ import annotations

from agent.errors import HostError, InputError


class NotFound(InputError):
    """A named thing (policy) does not exist: 404 over the API, exit 2 on the CLI."""


class Unavailable(HostError):
    """A part this request needs is not installed or not running (no worker configured, no engine): 503."""


class Conflict(HostError):
    """The request cannot run now (another transaction holds the host): 409."""
