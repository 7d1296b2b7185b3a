"""sysctl tuner: /proc/sys keys, exact values or at-least/at-most constraints.

Which keys and values a policy may set is agent/policy/sysctl_rules.py (allow-list of namespaces, a deny-list
nothing lifts); the tuner asks it again at plan time, for the key as written and for the key the file really
resolves to. Then the procfs tree under HostPaths decides: the resolved path must stay inside procfs/sys, and
the key must exist there and be writable. A policy naming a key this kernel lacks is bad input (exit 2 with the
policy's file:line), found at plan time before anything is written. Keys whose value is memory taken from
everything else (sysctl_rules.MEMORY_SHARES: vm.min_free_kbytes) are checked against the host's MemTotal here.

">=N" never lowers a value someone else raised (vm.max_map_count set higher by another package stays); "<=N"
never raises one. Multi-value keys (net.ipv4.ip_local_port_range) compare whitespace-normalised.

net.* keys are per network namespace: hosttune changes the namespace it runs in (the host's, when run as the
daemon; a container's own when run inside one with its own netns).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.errors import InputError
from agent.fsio import read_text
from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.policy.model import Policy
from agent.policy.sysctl_rules import (
    MEMORY_SHARES,
    memory_share_problem,
    sysctl_constraint,
    sysctl_key_problem,
    sysctl_value_problem,
)
from agent.tunable import formats
from agent.tunable.change import Change, Compare, change
from agent.tunable.tuner import Tuner
from agent.tuners.hugepages import memory_totals
from agent.tuners.registration import register


def sysctl_path(paths: HostPaths, key: str, field: str) -> Path:
    """The file of `key` under procfs/sys, or InputError(field) when the key is malformed or not one a policy
    may set (sysctl_rules), escapes the tree, resolves to a key that is not allowed, does not exist or is
    read-only."""
    problem = sysctl_key_problem(key)
    if problem:
        raise InputError(problem, field=field)
    root = paths.proc("sys")
    path = paths.sysctl(key)
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise InputError(f"sysctl key {key!r} resolves outside {root}", field=field)
    resolved = os.path.relpath(real, real_root).replace(os.sep, ".")
    if resolved != key:
        problem = sysctl_key_problem(resolved)
        if problem:
            raise InputError(f"sysctl key {key!r} resolves to {resolved}: {problem}", field=field)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise InputError(f"no sysctl {key!r} on this host (no {path})", field=field) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"sysctl {key!r} is a directory, not a value", field=field)
    if not st.st_mode & 0o222:
        raise InputError(f"sysctl {key!r} is read-only on this host", field=field)
    return path


def parse_desired(key: str, desired: int | str, field: str) -> tuple[str, Compare]:
    """(value to write, comparison) from a policy value: 5, "5", "1024 65535", ">=N", "<=N"."""
    problem = sysctl_value_problem(key, desired)
    if problem:
        raise InputError(problem, field=field)
    if isinstance(desired, int):
        return str(desired), "eq"
    text = desired.strip()
    constraint = sysctl_constraint(text)  # well formed: sysctl_value_problem refused any other '>='/'<=' value
    if constraint is not None:
        compare, bound = constraint
        return bound, compare
    if not text:
        raise InputError(f"{key}: empty value", field=field)
    return formats.normalize(text), "eq"


@register
class SysctlTuner(Tuner):
    name = "sysctl"
    order = 10
    domains = ("sysctl",)
    sections = ("sysctl",)

    def plan(self, policy: Policy, facts: HostFacts | None, paths: HostPaths) -> list[Change]:
        changes = []
        for key, desired in policy.sysctl.items():
            field = f"sysctl.{key}"
            path = sysctl_path(paths, key, field)
            value, compare = parse_desired(key, desired, field)
            if key in MEMORY_SHARES:
                problem = memory_share_problem(key, value, memory_totals(facts, paths)[0])
                if problem:
                    raise InputError(problem, field=field)
            current = formats.parse("scalar", read_text(path))
            if compare != "eq" and current is not None and not current.split()[0].lstrip("-").isdigit():
                raise InputError(f"{key} holds {current!r}: '>='/'<=' need a numeric sysctl", field=field)
            reason = "per network namespace: this namespace only" if key.startswith("net.") else ""
            ok_reason = {"eq": "already set", "ge": f"{current} is at least {value}",
                         "le": f"{current} is at most {value}"}[compare]
            changes.append(change(self.name, key, current=current, desired=str(desired), value=value, path=path,
                                  field=field, compare=compare, ok_reason=ok_reason, change_reason=reason))
        return changes
