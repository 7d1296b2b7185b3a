"""Request bodies. Every field bounded: a policy by name (as on the search path), as YAML text, or as a JSON object.

Paths are deliberately not accepted: a token holder could otherwise make the root daemon read any file on the
host. Inline policies go through the same loader and validation as policy files (the loader reads them from a
file the daemon writes under its state dir), so a bad one gets the same file:line/field message, naming the body.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

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
