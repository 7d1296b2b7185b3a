"""Request bodies. Every field bounded: a policy by name (as on the search path), as YAML text, or as a JSON object.

Paths are deliberately not accepted: a token holder could otherwise make the root daemon read any file on the
host. Inline policies go through the same loader and validation as policy files (the loader reads them from a
file the daemon writes under its state dir), so a bad one gets the same file:line/field message, naming the body.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from agent.policy.yamlnodes import MAX_DEPTH, MAX_NODES

POLICY_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,128}$"
MAX_POLICY_TEXT = 256 * 1024


class PolicyRequest(BaseModel):
    """Exactly one of `name`, `yaml`, `policy`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"name": "llm-cpu-throughput"},
                     {"yaml": "name: mine\nextends: base\nsysctl:\n  vm.swappiness: 1\n"},
                     {"policy": {"name": "mine", "sysctl": {"vm.swappiness": 1}}}]})

    name: str | None = Field(None, pattern=POLICY_NAME_PATTERN, description="a policy on the daemon's search path")
    yaml: str | None = Field(None, min_length=1, max_length=MAX_POLICY_TEXT, description="a policy as YAML text")
    policy: dict[str, Any] | None = Field(None, description="a policy as a JSON object")

    @field_validator("policy")
    @classmethod
    def _bounded(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """The JSON form gets the YAML form's bounds: nesting, number of values, size (measured without
        recursion first, so a body nested 500 deep is a 422, not a RecursionError)."""
        if value is None:
            return value
        count, stack = 0, [(value, 0)]
        while stack:
            item, depth = stack.pop()
            count += 1
            if depth > MAX_DEPTH:
                raise ValueError(f"policy is nested more than {MAX_DEPTH} levels deep")
            if count > MAX_NODES:
                raise ValueError(f"policy has more than {MAX_NODES} values")
            children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
            stack.extend((child, depth + 1) for child in children)
        size = len(json.dumps(value, ensure_ascii=False).encode())
        if size > MAX_POLICY_TEXT:
            raise ValueError(f"policy is {size} bytes as JSON; the limit is {MAX_POLICY_TEXT}")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> PolicyRequest:
        given = [k for k in ("name", "yaml", "policy") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'name', 'yaml' or 'policy'"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


class RevertRequest(BaseModel):
    """Optional body of POST /v1/revert."""

    model_config = ConfigDict(extra="forbid")

    force: StrictBool = Field(False, description="also restore targets someone else changed since hosttune set "
                                                 "them (otherwise skipped, listed, and answered 409)")
