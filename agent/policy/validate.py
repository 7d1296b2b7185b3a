"""Validate the resolved tree with the Policy model and turn the first pydantic error into ONE clear InputError
with the file, line and dotted field of the value that is wrong.

pydantic's error `loc` mixes data keys with union member tags ('int', 'str', 'ClockRange',
"literal['max','base']"); we follow the loc through the actual data, skipping parts that are not there, so the
field is always a real path the user wrote. Alternatives of one union give one message ("expected a valid
integer or a valid string"). Unknown keys get the closest valid key as a suggestion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from agent.errors import InputError
from agent.policy import fieldtypes
from agent.policy.model import Policy
from agent.policy.yamlnodes import Node, dotted, nearest_node, node_at, to_plain

MAX_SHOWN_KEYS = 12


def validate_tree(root: Node, computed: Mapping[str, str] | None = None) -> Policy:
    data = to_plain(root)
    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        raise to_input_error(e, root, data, computed or {}) from None


def data_path(loc: tuple[int | str, ...], data: Any, missing: bool) -> tuple[str | int, ...]:
    path: list[str | int] = []
    cur = data
    for i, part in enumerate(loc):
        found, child = _child(cur, part)
        if found:
            cur = child
            path.append(part)
        elif missing and i == len(loc) - 1:
            path.append(part)
    return tuple(path)


def _child(container: Any, part: int | str) -> tuple[bool, Any]:
    if isinstance(container, dict) and part in container:
        return True, container[part]
    if isinstance(container, list) and isinstance(part, int) and 0 <= part < len(container):
        return True, container[part]
    return False, None


def to_input_error(error: ValidationError, root: Node, data: Any, computed: Mapping[str, str]) -> InputError:
    errors = error.errors(include_url=False)
    first = errors[0]
    path = data_path(first["loc"], data, first["type"] == "missing")
    same = [e for e in errors if data_path(e["loc"], data, e["type"] == "missing") == path]
    ctx = first.get("ctx") or {}
    target = node_at(root, path)
    if target is not None and isinstance(target.value, dict) and ctx.get("key") in target.value:
        path = (*path, ctx["key"])  # a validator that names the bad key in its context: point at that entry
    elif target is not None and isinstance(target.value, list) and isinstance(ctx.get("index"), int):
        path = (*path, ctx["index"])
    field = dotted(path)
    if first["type"] == "extra_forbidden":
        message = _unknown_key(path)
    elif first["type"] == "missing":
        message = f"missing required key {path[-1]!r}" if path else "missing required key"
    else:
        message = _describe(same)
    if field in computed:
        message += f" (computed from '={computed[field]}')"
    node = nearest_node(root, path)
    return InputError(message, path=node.file, line=node.line, field=field or None)


def _unknown_key(path: tuple[str | int, ...]) -> str:
    key = str(path[-1])
    found = fieldtypes.walk(Policy, path[:-1])
    model = fieldtypes.model_in(found[0]) if found else None
    if model is None:
        return f"unknown key {key!r}"
    valid = [*model.model_fields, "when"] if path[:-1] else list(model.model_fields)
    guess = fieldtypes.closest(key, valid)
    if guess:
        return f"unknown key {key!r} (did you mean {guess!r}?)"
    shown = ", ".join(valid[:MAX_SHOWN_KEYS]) + (", ..." if len(valid) > MAX_SHOWN_KEYS else "")
    return f"unknown key {key!r} (valid keys: {shown})"


def _describe(errors: list[Any]) -> str:
    msgs: list[str] = []
    for e in errors:
        msg = str(e["msg"])
        msg = msg.removeprefix("Value error, ")
        if msg not in msgs:
            msgs.append(msg)
    # alternatives of a union read as one sentence: "Input should be a valid integer or input should be ..."
    text = " or ".join(m[0].lower() + m[1:] if i else m for i, m in enumerate(msgs))
    if errors[0]["type"] not in ("sysctl_entry", "hugepage_pool_twice", "cmdline_param", "value_error"):
        got = errors[0].get("input")
        text += f" (got {_short(got)})"
        if isinstance(got, bool) and not any(e["type"] == "bool_type" for e in errors):
            text += "; YAML reads yes/no/on/off/true/false as booleans: quote the word"
    return text


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
