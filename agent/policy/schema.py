"""JSON schema of the policy YAML a user writes (`hosttune policy schema`), for editors and CI linting.

It is the resolved Policy's schema plus what only exists before resolution: `when:` on every section and list
item, `{value: ..., when: ...}` entries in sysctl/kernel_cmdline, computed values ("=expression") wherever a
number or boolean goes, and `name` optional (it defaults to the file's stem).
"""

from __future__ import annotations

import copy
from typing import Any

from agent.policy.model import Policy

WHEN_SCHEMA: dict[str, Any] = {
    "description": "keep this section/item only when the condition on host facts holds, e.g. 'gpus.count > 0'",
    "type": ["string", "boolean"],
}
COMPUTED_SCHEMA: dict[str, Any] = {
    "description": "computed value: '=' then an expression over host facts, e.g. '=ceil(model.size_bytes / 2Mi)'",
    "type": "string",
    "pattern": "^=",
}
SCALAR_TYPES = {"integer", "number", "boolean"}


def user_policy_schema() -> dict[str, Any]:
    schema = copy.deepcopy(Policy.model_json_schema())
    schema["title"] = "hosttune policy (as written)"
    schema["description"] = ("A hosttune policy. See docs/policies.md: extends, when, computed values; "
                             "a null value deletes the inherited key.")
    for name, definition in schema.get("$defs", {}).items():
        if definition.get("type") == "object" and "properties" in definition:
            definition["properties"]["when"] = WHEN_SCHEMA
            schema["$defs"][name] = _computed(definition)
    root_props = schema["properties"]
    for key, prop in list(root_props.items()):
        if key not in ("name", "description", "extends"):
            root_props[key] = _computed(prop)
    for section in ("sysctl", "kernel_cmdline"):
        prop = root_props[section]
        value_schema = prop.get("additionalProperties", {})
        prop["additionalProperties"] = {"anyOf": [value_schema, _entry(value_schema)]}
        prop["properties"] = {"when": WHEN_SCHEMA}
    schema["required"] = [r for r in schema.get("required", []) if r != "name"]
    return schema


def _entry(value_schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "description": "a conditional entry",
            "properties": {"value": value_schema, "when": WHEN_SCHEMA},
            "required": ["value"], "additionalProperties": False}


def _computed(node: Any) -> Any:
    """Let every number/boolean slot also take a computed-value string."""
    if isinstance(node, list):
        return [_computed(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: (_computed(v) if k in ("items", "anyOf", "oneOf", "additionalProperties", "prefixItems")
               else v) for k, v in node.items()}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _computed(v) for k, v in node["properties"].items()}
    if isinstance(out.get("type"), str) and out["type"] in SCALAR_TYPES:
        return {"anyOf": [out, COMPUTED_SCHEMA]}
    return out
