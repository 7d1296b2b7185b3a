"""OS trials: host changes the controller tries like knob steps — applied, measured on live traffic with the same
windows and rules, kept only when they pay (or are neutral and the policy marks them required), else undone.

This module is pure: it turns the policy's `controller.os_trials` list and the host facts into OsTrial records
(what changes, from what to what, as a policy fragment the tuning engine applies). The OS actuator (the daemon's,
agent/daemon/os_actuator.py) runs them through the journaled tuning engine (agent/tuning/trial.py).

Which levers, and why these:
- thp: transparent hugepages `enabled` between always and madvise. With `always`, anonymous memory (weights loaded
  without mmap, KV cache, compute buffers) may be backed by 2 MiB pages; page-cache mappings (mmap'd weights) are
  not, so it matters only for what the worker keeps in anonymous memory.
- thp_defrag: THP `defrag` to defer+madvise (khugepaged compacts in the background; madvised regions stall).
- numa_balancing: kernel.numa_balancing flipped; only where the host has more than one NUMA node (on one node
  there is nothing to migrate).
- governor: cpufreq scaling governor to `performance`; only where cpufreq exists (not in most VMs).
Not trials: block readahead of the model's disk only changes how fast weights are read at load; a trial is judged
on tokens/s of live traffic in a window where nothing loads, so it would always read as neutral. It is a
plan-time setting (`block: read_ahead_kb`), measured by `bench/worker_load.py` (cold load time).
More levers plug in as one builder each in BUILDERS (e.g. the weights' hugepage backing, once it is a journaled
change a policy fragment can express); a lever the worker only sees after a restart sets `restart`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from agent.inspect.models import HostFacts
from agent.policy.controller_spec import ControllerSpec
from agent.policy.model import CpuSpec, Policy, ThpSpec


class OsTrial(BaseModel):
    """One OS lever to try: `before` -> `after` (target -> value, for the decision record), applied as `fragment`
    (a policy holding only this lever's section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    before: dict[str, str]
    after: dict[str, str]
    fragment: Policy
    required: bool = False
    restart: bool = False

    @property
    def key(self) -> str:
        return f"os:{self.name}"


@dataclass(frozen=True)
class OsStep:
    """Action for the OS actuator: apply the trial (opens it), keep it (commit) or undo it (roll back)."""

    trial: OsTrial
    op: Literal["apply", "keep", "undo"]
    reason: str


Builder = Callable[[HostFacts], OsTrial | str]


def _fragment(name: str, **sections: object) -> Policy:
    return Policy.model_validate({"name": f"os-trial-{name.replace('_', '-')}", **sections})


def _thp(setting: Literal["enabled", "defrag"], name: str, flip: Callable[[str], str]) -> Builder:
    """THP `setting` from what the host holds to flip(it), where the kernel offers that choice."""
    def build(facts: HostFacts) -> OsTrial | str:
        now = getattr(facts.thp, setting)
        if not facts.thp.available or now is None:
            return "no transparent hugepages on this kernel"
        to = flip(now)
        if to not in getattr(facts.thp, f"{setting}_choices"):
            return f"THP {setting} {to!r} is not offered here"
        return OsTrial(name=name, before={f"thp.{setting}": now}, after={f"thp.{setting}": to}, restart=True,
                       fragment=_fragment(name, thp=ThpSpec.model_validate({setting: to})))
    return build


def _numa_balancing(facts: HostFacts) -> OsTrial | str:
    if len(facts.cpu.numa_nodes) < 2:
        return f"{len(facts.cpu.numa_nodes)} NUMA node(s): nothing to balance"
    now = facts.sysctl.get("kernel.numa_balancing")
    if now is None or not now.strip().isdigit():
        return "kernel.numa_balancing is not readable here"
    to = "0" if now.strip() != "0" else "1"
    return OsTrial(name="numa_balancing", before={"kernel.numa_balancing": now.strip()},
                   after={"kernel.numa_balancing": to},
                   fragment=_fragment("numa_balancing", sysctl={"kernel.numa_balancing": int(to)}))


def _governor(facts: HostFacts) -> OsTrial | str:
    cf = facts.cpufreq
    if not cf.available or not cf.cpus:
        return f"no cpufreq on this host ({cf.reason or 'no driver'})"
    now = sorted({c.governor for c in cf.cpus if c.governor})
    if now == ["performance"]:
        return "every CPU already runs the performance governor"
    if not all("performance" in c.available_governors for c in cf.cpus):
        return "the performance governor is not offered on every CPU"
    return OsTrial(name="governor", before={"cpu.governor": ",".join(now) or "?"},
                   after={"cpu.governor": "performance"},
                   fragment=_fragment("governor", cpu=CpuSpec(governor="performance")))


BUILDERS: dict[str, Builder] = {
    "thp": _thp("enabled", "thp", lambda now: "madvise" if now == "always" else "always"),
    "thp_defrag": _thp("defrag", "thp_defrag", lambda now: "madvise" if now == "defer+madvise" else "defer+madvise"),
    "numa_balancing": _numa_balancing, "governor": _governor}


NO_RESTART = "not offered until the trial can restart the worker (the worker only sees this change after one)"


def os_trials_for(spec: ControllerSpec | None, facts: HostFacts, *,
                  can_restart: bool = False) -> tuple[list[OsTrial], dict[str, str]]:
    """The trials the policy allows that make sense on this host, in the policy's order, and why each other one
    is left out (name -> reason). A trial that needs a worker restart (THP: only new anonymous faults see it, and
    llama-server allocates at start) is left out unless `can_restart`: the controller does not restart the worker
    around an OS trial yet, so it would always measure neutral."""
    if spec is None:
        return [], {}
    trials: list[OsTrial] = []
    skipped: dict[str, str] = {}
    for name in spec.os_trials:
        built = BUILDERS[name](facts)
        if isinstance(built, str):
            skipped[name] = built
        elif built.restart and not can_restart:
            skipped[name] = NO_RESTART
        else:
            trials.append(built.model_copy(update={"required": name in spec.required}))
    return trials, skipped


def next_os_trial(trials: list[OsTrial], tabu: dict[str, float], settled: set[str], now: float) -> OsTrial | None:
    """The first trial neither kept (settled) nor tabu."""
    for t in trials:
        if t.name not in settled and tabu.get(t.key, -1e18) <= now:
            return t
    return None
