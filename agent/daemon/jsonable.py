"""The JSON-able form of what the tuning engine, the supervisor, telemetry and the controller return (pydantic
models, dataclasses, lists and dicts of them, paths), as the REST API replies with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


def jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [jsonable(o) for o in obj]
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
