#!/usr/bin/python
"""Ansible module: plan, apply or verify a hosttune policy on the managed host through the hosttune CLI.

Why a module and not `command`: it turns `hosttune plan --json` into Ansible's own vocabulary - `changed` only
when the host differs from the policy, a `--diff` view of every tunable (current -> desired), check mode that
never writes (plan is read-only by design), and `reboot_required` for items that need a reboot.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hosttune_policy
short_description: Plan, apply or verify a hosttune policy
description:
  - Runs C(hosttune plan|apply|verify POLICY --json) on the managed host and reports Ansible changed/failed
    status, a diff of every tunable that would change, and whether a reboot is needed.
  - C(planned) never writes to the host, so it runs unchanged in check mode and shows what a run would change.
options:
  policy:
    description: Name of the policy (file stem in I(policy_dir)).
    type: str
    required: true
  policy_dir:
    description: Directory holding the deployed policy files.
    type: path
    default: /etc/hosttune/policies
  staged:
    description:
      - Policy files not deployed yet, as file name -> YAML text. They are laid over I(policy_dir) in a private
        temporary directory, so check mode can plan a policy before the copy task has written it.
    type: dict
    default: {}
  state:
    description: C(planned) reports what would change; C(applied) applies it; C(verified) fails on drift.
    type: str
    choices: [planned, applied, verified]
    default: planned
  executable:
    description: The hosttune command.
    type: path
    default: /opt/hosttune/venv/bin/hosttune
  state_dir:
    description: hosttune's journal and state directory.
    type: path
    default: /var/lib/hosttune
"""

RETURN = r"""
changes:
  description: The planned (or applied) changes as hosttune reports them.
  type: list
  returned: always
reboot_required:
  description: True when a change only takes effect after a reboot (kernel command line).
  type: bool
  returned: always
drift:
  description: For C(verified), what differs from the policy.
  type: list
  returned: when state is verified
"""

import json
import os
import shutil
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

REBOOT_TUNERS = {"bootargs", "kernel_cmdline", "cmdline"}


def _changes(doc: Any) -> list[dict[str, Any]]:
    """The list of changes in a plan/apply document: {"changes": [...]} or a bare list."""
    if isinstance(doc, list):
        return [c for c in doc if isinstance(c, dict)]
    if isinstance(doc, dict):
        for key in ("changes", "items", "applied", "planned"):
            if isinstance(doc.get(key), list):
                return [c for c in doc[key] if isinstance(c, dict)]
    return []


def _pick(change: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in change:
            return change[key]
    return None


def _label(change: dict[str, Any]) -> str:
    tuner = _pick(change, "tuner", "kind")
    target = _pick(change, "target", "key", "name", "path")
    return f"{tuner}: {target}" if tuner else str(target)


def _is_reboot(change: dict[str, Any]) -> bool:
    return bool(change.get("reboot_required") or _pick(change, "tuner", "kind") in REBOOT_TUNERS)


def _pending(changes: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(writes the host would get, reboot-only advice). Items already right ("ok"), not applicable here or
    unsupported are neither: they must not make a converged host look changed."""
    todo = [c for c in changes if c.get("action", "change") == "change"]
    return [c for c in todo if not _is_reboot(c)], [c for c in todo if _is_reboot(c)]


def _drift(doc: Any) -> list[dict[str, Any]]:
    """Verify items that do not hold (reboot-pending items are not drift)."""
    items = _changes(doc)
    return [i for i in items if i.get("state", "drift") in ("drift", "unknown")]


def _diff(policy: str, changes: list[dict[str, Any]]) -> dict[str, str]:
    before = "".join(f"{_label(c)} = {_pick(c, 'current', 'before', 'old')}\n" for c in changes)
    after = "".join(f"{_label(c)} = {_pick(c, 'desired', 'after', 'new')}\n" for c in changes)
    return {"before": before, "after": after, "before_header": "host now", "after_header": f"policy {policy}"}


def _stage(policy_dir: str, staged: dict[str, str]) -> str:
    """A private directory: every deployed policy (symlinked, so `extends:` resolves) under the staged texts."""
    tmp = tempfile.mkdtemp(prefix="hosttune-plan-")
    if os.path.isdir(policy_dir):
        for name in os.listdir(policy_dir):
            os.symlink(os.path.join(policy_dir, name), os.path.join(tmp, name))
    for name, text in staged.items():
        if os.path.basename(name) != name:
            raise ValueError(f"staged policy file name must not contain a directory: {name!r}")
        path = os.path.join(tmp, name)
        if os.path.lexists(path):
            os.unlink(path)
        with open(path, "w") as f:
            f.write(text)
    return tmp


def _verify(module: AnsibleModule, p: dict[str, Any], common: list[str], plan: Any,
            writes: list[dict[str, Any]]) -> None:
    """Healthy = the journal's applied policy is this one, every tunable it applied still holds (`hosttune
    verify`), and planning this policy again finds nothing to write. Exits the module either way."""
    rc, doc, out, err = _run_json(module, [p["executable"], "verify", *common])
    want = plan.get("policy") if isinstance(plan, dict) else None
    applied = doc.get("policy") if isinstance(doc, dict) else None
    drift = _drift(doc)
    problems = []
    if rc not in (0, 1) or doc is None:
        problems.append(f"hosttune verify failed (exit {rc}): {err.strip()}")
    if rc == 1 or drift:
        problems.append("drift: " + ", ".join(f"{_label(d)} is {d.get('current')} (want {d.get('expected')})"
                                              for d in drift) if drift else "drift or an interrupted transaction")
    if want and applied != want:
        problems.append(f"applied policy is {applied!r}, not {want!r}")
    if writes:
        problems.append("drift: plan still wants " + ", ".join(
            f"{_label(c)} {_pick(c, 'current')} -> {_pick(c, 'desired', 'value')}" for c in writes))
    if problems:
        module.fail_json(msg=f"{p['policy']} does not hold: " + "; ".join(problems), rc=rc, verify=doc,
                         drift=drift, changes=writes, reboot_required=False)
    module.exit_json(changed=False, verify=doc, drift=[], changes=[], reboot_required=False)


def _run_json(module: AnsibleModule, argv: list[str]) -> tuple[int, Any, str, str]:
    rc, out, err = module.run_command(argv, check_rc=False)
    try:
        doc = json.loads(out) if out.strip() else None
    except ValueError:
        doc = None
    return rc, doc, out, err


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "policy": {"type": "str", "required": True},
            "policy_dir": {"type": "path", "default": "/etc/hosttune/policies"},
            "staged": {"type": "dict", "default": {}},
            "state": {"type": "str", "choices": ["planned", "applied", "verified"], "default": "planned"},
            "executable": {"type": "path", "default": "/opt/hosttune/venv/bin/hosttune"},
            "state_dir": {"type": "path", "default": "/var/lib/hosttune"},
        },
        supports_check_mode=True,
    )
    p = module.params
    if not os.access(p["executable"], os.X_OK):
        module.fail_json(msg=f"{p['executable']} is not installed")
    tmp = None
    try:
        policy_dir = p["policy_dir"]
        if p["staged"]:
            tmp = _stage(policy_dir, {k: str(v) for k, v in p["staged"].items()})
            policy_dir = tmp
        policy_path = os.path.join(policy_dir, f"{p['policy']}.yaml")
        common = ["--state-dir", p["state_dir"], "--json"]

        rc, doc, out, err = _run_json(module, [p["executable"], "plan", policy_path, *common])
        if rc != 0:
            module.fail_json(msg=f"hosttune plan {p['policy']} failed (exit {rc}): {err.strip()}", rc=rc,
                             stdout=out, stderr=err)
        writes, reboot = _pending(_changes(doc))
        if p["state"] == "verified":
            _verify(module, p, common, doc, writes)
        result: dict[str, Any] = {"changes": writes, "reboot": reboot, "reboot_required": bool(reboot), "plan": doc}
        if module._diff and writes:
            result["diff"] = _diff(p["policy"], writes)
        if p["state"] == "planned" or module.check_mode or not writes:
            module.exit_json(changed=bool(writes), **result)

        rc, doc, out, err = _run_json(module, [p["executable"], "apply", policy_path, *common])
        if rc != 0:
            module.fail_json(msg=f"hosttune apply {p['policy']} failed (exit {rc}): {err.strip()}", rc=rc,
                             stdout=out, stderr=err, **result)
        result.update(applied=doc)
        module.exit_json(changed=True, **result)
    except (OSError, ValueError) as e:
        module.fail_json(msg=str(e))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
