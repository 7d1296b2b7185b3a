"""CPU tuner: cpufreq scaling governor and energy_performance_preference (intel_pstate / amd_pstate EPP).

Settings are per cpufreq policy: cpuN/cpufreq is usually a link to cpufreq/policyM shared by several CPUs, so
each policy directory is planned once (writing through every CPU would journal an "original" already changed by
the write to its sibling). Without a cpufreq driver (VMs, this CI machine) the tuner is not applicable.

Governors and preferences are validated against what the driver offers (scaling_available_governors,
energy_performance_available_preferences); EPP also accepts a raw 0-255 value. Governors are set before EPP
because intel_pstate refuses most EPP values while the governor is `performance`.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.errors import InputError
from agent.fsio import parse_cpu_list, read_str, read_text
from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.policy.model import Policy
from agent.tunable import formats
from agent.tunable.change import Change, change
from agent.tunable.tuner import Tuner
from agent.tuners.registration import register

SETTINGS = (
    ("governor", "scaling_governor", "scaling_available_governors"),
    ("energy_performance_preference", "energy_performance_preference", "energy_performance_available_preferences"),
)


def cpufreq_policies(paths: HostPaths) -> list[tuple[str, Path]]:
    """(name, directory) of each distinct cpufreq policy of the online CPUs, in CPU order."""
    cpu_root = paths.sys("devices/system/cpu")
    online = parse_cpu_list(read_str(cpu_root / "online"))
    if not online:
        online = sorted(int(p.name[3:]) for p in cpu_root.glob("cpu[0-9]*") if p.name[3:].isdigit())
    seen: set[str] = set()
    out = []
    for cpu in online:
        d = cpu_root / f"cpu{cpu}" / "cpufreq"
        if not d.is_dir():
            continue
        real = os.path.realpath(d)
        if real in seen:
            continue
        seen.add(real)
        base = os.path.basename(real)
        out.append((base if base.startswith("policy") else f"cpu{cpu}", d))
    return out


@register
class CpuTuner(Tuner):
    name = "cpu"
    order = 40
    domains = ("cpu", "cpufreq", "governor", "power")
    sections = ("cpu",)

    def plan(self, policy: Policy, facts: HostFacts | None, paths: HostPaths) -> list[Change]:
        if policy.cpu is None:
            return []
        wanted = [(s, f, a, getattr(policy.cpu, s)) for s, f, a in SETTINGS if getattr(policy.cpu, s) is not None]
        if not wanted:
            return []
        policies = cpufreq_policies(paths)
        if not policies:
            return [Change(tuner=self.name, target=f"cpufreq/{s}", desired=v, action="not_applicable",
                           reason="no cpufreq driver on this host", field=f"cpu.{s}") for s, _, _, v in wanted]
        changes = []
        for setting, filename, available_file, desired in wanted:
            field = f"cpu.{setting}"
            for name, d in policies:
                target = f"cpufreq/{name}/{filename}"
                path = d / filename
                raw = read_text(path)
                if raw is None:
                    changes.append(Change(tuner=self.name, target=target, desired=desired, action="not_applicable",
                                          reason=f"driver has no {filename}", field=field))
                    continue
                offered = (read_str(d / available_file) or "").split()
                numeric_epp = setting == "energy_performance_preference" and desired.isdigit()
                if offered and desired not in offered and not numeric_epp:
                    raise InputError(f"{setting} {desired!r} is not offered by {name} "
                                     f"(available: {', '.join(offered)})", field=field)
                changes.append(change(self.name, target, current=formats.parse("scalar", raw), desired=desired,
                                      value=desired, path=path, field=field))
        return changes
