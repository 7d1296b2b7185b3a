"""THP tuner: transparent hugepage `enabled` and `defrag` (sysfs choice files).

The current value is the bracketed choice. Restore writes the original choice back, so the file reads back byte
for byte as before. A choice this kernel does not offer (older kernels lack defer+madvise) is bad input.
"""

from __future__ import annotations

from agent.errors import InputError
from agent.fsio import read_text
from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.policy.model import Policy
from agent.tunable import formats
from agent.tunable.change import Change, change
from agent.tunable.tuner import Tuner
from agent.tuners.registration import register

SETTINGS = ("enabled", "defrag")


@register
class ThpTuner(Tuner):
    name = "thp"
    order = 30
    domains = ("thp", "transparent_hugepage", "memory")
    sections = ("thp",)

    def plan(self, policy: Policy, facts: HostFacts | None, paths: HostPaths) -> list[Change]:
        if policy.thp is None:
            return []
        changes = []
        for setting in SETTINGS:
            desired = getattr(policy.thp, setting)
            if desired is None:
                continue
            field = f"thp.{setting}"
            path = paths.sys("kernel/mm/transparent_hugepage", setting)
            raw = read_text(path)
            if raw is None:
                changes.append(Change(tuner=self.name, target=f"thp.{setting}", desired=desired,
                                      action="not_applicable", reason="kernel without transparent hugepages",
                                      field=field))
                continue
            offered = formats.choices(raw)
            if desired not in offered:
                raise InputError(f"THP {setting} {desired!r} is not offered here (choices: {', '.join(offered)})",
                                 field=field)
            changes.append(change(self.name, f"thp.{setting}", current=formats.parse("choice", raw),
                                  desired=desired, value=desired, path=path, field=field, fmt="choice"))
        return changes
