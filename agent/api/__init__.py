"""The REST API (FastAPI): app factory, one router per resource, bearer-token auth, audit log.

`create_app` is imported lazily: FastAPI takes a while to import, and the daemon applies its policy before it
needs the web stack (launch-to-applied time; see docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from agent.api.app import create_app

        return create_app
    raise AttributeError(name)
