"""Walking pydantic models by path: which model, type and constraints live at `worker.placement.cpus`.

Used to suggest the closest valid key for a typo, to check fact names in expressions against the HostFacts
schema without any facts at hand, and to find a stand-in value for a computed value that cannot be evaluated
offline.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo


def members(ann: Any) -> list[Any]:
    """The alternatives of a Union/Optional annotation, without None; [ann] otherwise."""
    origin = typing.get_origin(ann)
    if origin is typing.Union or origin is types.UnionType:
        out: list[Any] = []
        for arg in typing.get_args(ann):
            if arg is not type(None):
                out.extend(members(arg))
        return out
    return [ann]


def is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def model_in(ann: Any) -> type[BaseModel] | None:
    """The first pydantic model among an annotation's alternatives."""
    for m in members(ann):
        if is_model(m):
            return m
    return None


def step(ann: Any, part: str | int) -> tuple[Any, FieldInfo | None] | None:
    """The annotation (and field info) one step below `ann`, or None when `part` does not exist there."""
    for m in members(ann):
        origin = typing.get_origin(m)
        if is_model(m) and isinstance(part, str) and part in m.model_fields:
            info = m.model_fields[part]
            return info.annotation, info
        if origin is list and isinstance(part, int):
            return typing.get_args(m)[0], None
        if origin is dict and isinstance(part, str):
            return typing.get_args(m)[1], None
    return None


def walk(root: type[BaseModel], path: Iterable[str | int]) -> tuple[Any, FieldInfo | None] | None:
    ann: Any = root
    info: FieldInfo | None = None
    for part in path:
        found = step(ann, part)
        if found is None:
            return None
        ann, info = found
    return ann, info


def closest(word: str, options: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return matches[0] if matches else None


def stand_in(ann: Any, info: FieldInfo | None, text: str) -> Any:
    """Some value the field accepts, for a computed value that cannot be evaluated without host facts.

    Prefers the expression text itself where strings are accepted; otherwise the smallest number allowed by the
    field's bounds, `true`, the first literal, or an empty list.
    """
    alternatives = members(ann)
    if str in alternatives:
        return text
    lower: float | None = None
    upper: float | None = None
    for meta in (info.metadata if info else []):
        if isinstance(meta, annotated_types.Ge):
            lower = float(meta.ge)  # type: ignore[arg-type]
        elif isinstance(meta, annotated_types.Gt):
            lower = float(meta.gt) + 1  # type: ignore[arg-type]
        elif isinstance(meta, annotated_types.Le):
            upper = float(meta.le)  # type: ignore[arg-type]
        elif isinstance(meta, annotated_types.Lt):
            upper = float(meta.lt) - 1  # type: ignore[arg-type]
    for alt in alternatives:
        if alt is int or alt is float:
            value = lower if lower is not None else 1.0
            if upper is not None:
                value = min(value, upper)
            return int(value) if alt is int else value
        if alt is bool:
            return True
        if typing.get_origin(alt) is typing.Literal:
            return typing.get_args(alt)[0]
        if typing.get_origin(alt) is list:
            return []
    return text
