"""The REST API (FastAPI): app factory, one router per resource, bearer-token auth, audit log."""

from agent.api.app import create_app

__all__ = ["create_app"]
