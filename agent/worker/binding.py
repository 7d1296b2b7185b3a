"""Turn a Placement into an argv prefix that binds CPUs and memory before the worker execs.

Mechanisms, best first: `numactl` (--physcpubind/--membind, when installed), else `bindexec` (our exec shim:
sched_setaffinity + set_mempolicy(MPOL_BIND) through the raw syscall). Both exec the worker in place, so the PID
the supervisor holds is the worker's own, and the binding is in force before the first allocation. A cpuset
cgroup would also confine threads the worker spawns later, but only cgroup v1 offers cpuset on these hosts and
affinity is inherited by threads anyway.

The shim always runs first when a parent-death signal or a privilege drop is wanted (prctl and setresuid must be
called in the child, and preexec_fn is unsafe from the supervisor's thread); it then execs numactl or the worker.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Literal

from pydantic import BaseModel, ConfigDict

from agent.fsio import format_cpu_list
from agent.worker.placement import Placement
from agent.worker.privdrop import RunAs

Mechanism = Literal["numactl", "bindexec", "none"]
BindPreference = Literal["auto", "numactl", "bindexec"]


class Binding(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mechanism: Mechanism
    cpus: list[int]
    membind_node: int | None
    prefix: list[str]


def plan_binding(placement: Placement | None, prefer: BindPreference = "auto", numactl: str | None = None,
                 parent_death_signal: int | None = None, run_as: RunAs | None = None) -> Binding:
    """The argv prefix that applies `placement` (mechanism `none` when nothing is to be bound), optionally
    makes the kernel send `parent_death_signal` to the worker when its supervising thread dies, and drops to
    `run_as` before the worker (or numactl) is exec'd."""
    # -P: the shim runs as root, so the working directory (wherever `hosttune` was started, /tmp say) must not
    # come first on its sys.path: a planted agent/worker/bindexec.py there would run as root.
    shim = [sys.executable, "-P", "-m", "agent.worker.bindexec"]
    guard = ["--pdeathsig", str(parent_death_signal), "--parent", str(os.getpid())] if parent_death_signal else []
    if run_as is not None:
        guard = [*run_as.shim_args(), *guard]
    if placement is None or (not placement.cpus and not placement.membind):
        return Binding(mechanism="none", cpus=[], membind_node=None, prefix=[*shim, *guard, "--"] if guard else [])
    node = placement.node if placement.membind else None
    cpus = format_cpu_list(placement.cpus) if placement.cpus else None
    numactl = numactl or (shutil.which("numactl") if prefer in ("auto", "numactl") else None)
    if numactl and prefer != "bindexec":
        prefix = [numactl]
        if cpus:
            prefix.append(f"--physcpubind={cpus}")
        if node is not None:
            prefix.append(f"--membind={node}")
        outer = [*shim, *guard, "--"] if guard else []
        return Binding(mechanism="numactl", cpus=placement.cpus, membind_node=node,
                       prefix=[*outer, *prefix, "--"])
    prefix = list(shim)
    if cpus:
        prefix += ["--cpus", cpus]
    if node is not None:
        prefix += ["--membind", str(node)]
    return Binding(mechanism="bindexec", cpus=placement.cpus, membind_node=node, prefix=[*prefix, *guard, "--"])
