"""What plan, apply, verify, revert and status share: host roots, the state dir, the NVML session (--nvml-sim),
loading a policy with facts, turning a tuner's field-only InputError into one that names the policy's file:line,
and the change table.

Not a command itself (it has no register()); the five command modules use it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from agent.errors import HostTuneError, InputError
from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.policy.loader import LoadedPolicy, load_policy
from agent.render import table
from agent.tunable.change import Change
from agent.tuning.plan import Plan
from agent.tuning.state import StateDir

if TYPE_CHECKING:
    from agent.gpu.nvml import Nvml

CHANGE_HEADERS = ("tuner", "target", "current", "desired", "action", "reason")
WIDTH = 48


def host_paths(args: argparse.Namespace) -> HostPaths:
    return HostPaths.from_options(args.procfs, args.sysfs, args.rootfs).check()


def state(args: argparse.Namespace) -> StateDir:
    return StateDir(args.state_dir)


def nvml_session(args: argparse.Namespace) -> Nvml | None:
    """--nvml-sim FILE (env HOSTTUNE_NVML_SIM): this command's NVML session on the simulator (installed for the
    whole process: pynvml's library is process-wide), handed to inspection and to the tuning engine's GPU tuner.
    None without the option: whoever needs NVML opens the real library when it first uses it."""
    sim = getattr(args, "nvml_sim", None)
    if not sim:
        return None
    from agent.gpu.nvml import open_nvml
    return open_nvml(sim)


def gather_facts(paths: HostPaths, nvml: Nvml | None = None) -> HostFacts:
    """Host facts for `when:` conditions, computed values, conflicts and block device kinds."""
    from agent.inspect import collect
    return collect(paths, nvml=nvml)


def load(ref: str, facts: HostFacts | None) -> LoadedPolicy:
    return load_policy(ref, facts)


@contextmanager
def located(loaded: LoadedPolicy | None) -> Iterator[None]:
    """Re-raise a tuner's InputError(field=...) with the policy file and line that set that field."""
    try:
        yield
    except HostTuneError as e:
        if loaded is not None:
            loaded.locate(e, or_source=True)
        raise


def shown(c: Change) -> tuple[str | None, str | None]:
    """(current, desired) for a table: whole files are described, long values cut."""
    if c.format == "text":
        return ("(absent)" if c.current is None else "(file)"), c.desired
    return _cut(c.current), _cut(c.desired)


def _cut(v: str | None) -> str | None:
    return v if v is None or len(v) <= WIDTH else v[:WIDTH - 3] + "..."


def change_rows(changes: Sequence[Change]) -> list[list[Any]]:
    rows = []
    for c in changes:
        current, desired = shown(c)
        rows.append([c.tuner, c.target, current, desired, c.action, c.reason])
    return rows


def print_changes(plan: Plan, out: TextIO) -> None:
    table(CHANGE_HEADERS, change_rows(plan.changes), out)
    grouped: dict[str, list[str]] = {}
    for c in plan.changes:
        for w in c.warnings:
            grouped.setdefault(w, []).append(c.target)
    for warning, targets in grouped.items():
        which = targets[0] if len(targets) == 1 else f"{targets[0]} and {len(targets) - 1} more"
        out.write(f"warning: {warning} ({which})\n")


def check_writable(paths: HostPaths) -> None:
    """Applying to the live host needs root; say so before anything else happens."""
    import os

    if paths.is_live and os.geteuid() != 0:
        raise InputError("changing the live host needs root (run as root, or give --procfs/--sysfs/--rootfs "
                         "of a copy)")
