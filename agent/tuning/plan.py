"""Plan: host facts + resolved policy -> the list of Changes. Writes nothing.

Each registered tuner plans its own section. The engine then adds two things no single tuner can know:
- conflict warnings: another tuning daemon (TuneD, irqbalance, ...) found in facts.conflicts whose `manages`
  overlaps a tuner's domains gets a warning on every one of that tuner's changes;
- stale targets: a target an earlier apply changed that the new policy no longer mentions is planned back to
  its journaled original, so switching policies leaves the host as "original + new policy", not a mixture.
  Unless someone else changed it since hosttune set it (planned "ok" with a warning: left as is, its original
  kept for `hosttune revert --force`) or it is gone from the host (not_applicable: dropped from the journal).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.policy.model import Policy
from agent.tunable import formats
from agent.tunable.change import Change
from agent.tunable.record import Record
from agent.tunable.tuner import Tuner
from agent.tuners.registry import TunerSet
from agent.tuning import hostfile
from agent.tuning.journal import Journal
from agent.tuning.ownership import drift_of, is_gone

ACTIONS = ("change", "ok", "not_applicable", "unsupported")
TUNED_SECTIONS = ("sysctl", "hugepages", "thp", "cpu", "block", "gpu", "kernel_cmdline")


class Plan(BaseModel):
    policy: str
    source: str | None = None
    changes: list[Change] = Field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(ACTIONS, 0)
        for c in self.changes:
            out[c.action] += 1
        return out

    @property
    def writes(self) -> list[Change]:
        return [c for c in self.changes if c.writes]

    def summary(self) -> str:
        n = self.counts()
        reboot = sum(1 for c in self.changes if c.reboot_required)
        return (f"{n['change'] - reboot} to change, {n['ok']} ok, {n['not_applicable']} not applicable, "
                f"{n['unsupported']} unsupported, {reboot} need a reboot (advice)")


def conflict_warnings(tuner: Tuner, facts: HostFacts | None) -> list[str]:
    if facts is None:
        return []
    out = []
    for conflict in facts.conflicts:
        overlap = sorted(set(conflict.manages) & set(tuner.domains))
        if overlap:
            who = conflict.name + (f" (pid {conflict.pid})" if conflict.pid else "")
            out.append(f"{who} also manages {', '.join(overlap)}: it may undo or fight this setting")
    return out


def stale_changes(planned: list[Change], journal: Journal | None) -> list[Change]:
    """Changes that put back originals of targets an earlier apply set and this policy does not mention.
    Side-effect records (nr_requests saved before a scheduler switch) follow the write that caused them."""
    if journal is None:
        return []
    keys = {c.key for c in planned}
    stale: list[Change] = []
    # newest first, as revert does: a scheduler is restored before the nr_requests its switch had reset
    for record in reversed(journal.data.originals):
        if record.key in keys:
            continue
        if record.side_effect_of is not None and record.side_effect_of in keys:
            continue
        if record.path is not None:  # non-file records (NVML) are left to revert
            stale.append(restore_change(record))
    return stale


def restore_change(record: Record) -> Change:
    now = hostfile.read_raw(Path(record.path)) if record.path else None
    original = formats.parse(record.format, record.original_raw)
    if is_gone(record):
        return Change(tuner=record.tuner, target=record.target, desired=original, action="not_applicable",
                      reason=f"gone from this host ({record.path} no longer exists): dropped from the journal",
                      path=record.path, value=original, format=record.format, stale=True)
    drift = drift_of(record)
    if drift is not None:
        return Change(tuner=record.tuner, target=record.target, current=drift.current, desired=original,
                      action="ok", reason="not in this policy, but changed by someone else since hosttune set it: "
                                          "left as is", path=record.path, value=original, format=record.format,
                      stale=True, warnings=[f"now {drift.current!r}, hosttune had set {drift.expected!r}; "
                                            f"`hosttune revert --force` restores the original {original!r}"])
    return Change(tuner=record.tuner, target=record.target, current=formats.parse(record.format, now),
                  desired=original if original is not None else "(absent)",
                  action="ok" if now == record.original_raw else "change",
                  reason="not in this policy: restore the original", path=record.path, value=original,
                  format=record.format, stale=True)


def unclaimed_sections(policy: Policy, tuners: list[Tuner]) -> list[Change]:
    """A policy section that no enabled tuner plans (a tuner missing from this build) is shown, not dropped."""
    claimed = {s for t in tuners for s in t.sections}
    out = []
    for section in TUNED_SECTIONS:
        if getattr(policy, section) and section not in claimed:
            out.append(Change(tuner=section, target=section, action="unsupported", field=section,
                              reason=f"no {section} tuner in this hosttune (installed tuners: "
                                     f"{', '.join(t.name for t in tuners)})"))
    return out


def make_plan(policy: Policy, facts: HostFacts | None, paths: HostPaths, *, journal: Journal | None = None,
              source: str | None = None, tuners: list[Tuner] | None = None) -> Plan:
    """Every tuner's changes in apply order, with conflict warnings, then stale originals to restore.
    `tuners`: the tuners that plan (every enabled one, without NVML session, when not given).
    InputError from a tuner (bad policy value for this host) propagates: nothing has been written."""
    changes: list[Change] = []
    active = tuners if tuners is not None else TunerSet().enabled()
    for tuner in active:
        warnings = conflict_warnings(tuner, facts)
        for c in tuner.plan(policy, facts, paths):
            if warnings and c.action in ("change", "ok"):
                c.warnings.extend(warnings)
            changes.append(c)
    changes.extend(unclaimed_sections(policy, active))
    changes.extend(stale_changes(changes, journal))
    return Plan(policy=policy.name, source=source, changes=changes)
