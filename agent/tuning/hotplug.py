"""The tuning engine's entry points for one block device that appears or goes while the daemon runs (hot-plug).

tune_disk  lock -> recover -> plan the applied policy's block section for this one disk -> one transaction through
           the normal writer and journal, committed into the applied policy: the policy's other targets are
           neither re-planned nor re-written (drift elsewhere stays reported, as the drift job's settings say).
mark_gone  lock -> the disk's entries in the applied policy become not_applicable "gone from this host" (so
           verify does not count them as drift); its originals whose file vanished are dropped with a warning
           (ownership.forget_gone). A detached loop device keeps its queue files: its originals stay, so
           `hosttune revert` still restores them byte for byte.

Both do nothing unless the journal's applied policy is the one the caller names (a CLI apply or revert since the
daemon applied it wins), and neither opens a transaction when nothing is to be written.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.policy.model import Policy
from agent.tunable.change import Change
from agent.tuners.blockdev import BlockdevTuner
from agent.tuners.registry import TunerSet
from agent.tuning.journal import Applied, Journal
from agent.tuning.ownership import forget_gone, is_gone
from agent.tuning.plan import Plan, make_plan
from agent.tuning.state import StateDir
from agent.tuning.transaction import ApplyResult, apply_plan, recover
from agent.tuning.writer import HostWriter, crash_after_from_env

if TYPE_CHECKING:
    from agent.gpu.nvml import Nvml

log = logging.getLogger("hosttune.engine")


def _of_disk(tuner: str, target: str, name: str) -> bool:
    return tuner == BlockdevTuner.name and target.startswith(f"block/{name}/")


def plan_disk(policy: Policy, facts: HostFacts | None, paths: HostPaths, name: str, *,
              source: str | None = None, tuner_set: TunerSet | None = None) -> Plan:
    """The block tuner's plan of `policy`, reduced to the changes of disk `name` (empty: no entry matches it)."""
    tuner_set = tuner_set if tuner_set is not None else TunerSet()
    full = make_plan(policy, facts, paths, source=source, tuners=[tuner_set.get(BlockdevTuner.name)])
    return Plan(policy=policy.name, source=source,
                changes=[c for c in full.changes if _of_disk(c.tuner, c.target, name)])


def _followed(journal: Journal, source: str | None) -> Applied | None:
    applied = journal.data.applied
    if applied is None or applied.source != source:
        log.info("hot-plug: the applied policy is not %s any more (%s): left alone", source,
                 applied.source if applied is not None else "nothing applied")
        return None
    return applied


def tune_disk(policy: Policy, paths: HostPaths, state: StateDir, name: str, *, facts: HostFacts | None,
              source: str | None, nvml: Nvml | None = None) -> ApplyResult | None:
    """Give a disk that just appeared the applied policy's block settings; None when nothing was written.
    `nvml`: the caller's NVML session, for rolling back an interrupted apply that had set GPUs."""
    tuner_set = TunerSet(nvml)
    with state.locked() as journal:
        writer = HostWriter(journal, crash_after=crash_after_from_env())
        recovered = recover(journal, writer, tuner_set)
        applied = _followed(journal, source)
        if applied is None:
            return None
        plan = plan_disk(policy, facts, paths, name, source=source, tuner_set=tuner_set)
        if plan.writes:
            return apply_plan(plan, journal, writer, recovered=recovered, onto=applied, tuner_set=tuner_set)
        # Nothing to write (its values held already): record the entries the applied policy lacks or holds as
        # gone (a disk back with its values kept); the others stay as committed.
        entries = {c.key: c for c in applied.changes}
        missing = [c for c in plan.changes if _lacking(entries.get(c.key), c)]
        if missing:
            journal.data.applied = applied.updated(missing, applied.txn)
            journal.save()
        return None


def _lacking(entry: Change | None, planned: Change) -> bool:
    """The applied policy has no live entry for a planned change (none, or a not_applicable/gone one)."""
    return entry is None or (entry.action not in ("change", "ok") and entry != planned)


def gone_change(change: Change, name: str) -> Change:
    return change.model_copy(update={"action": "not_applicable", "current": None,
                                     "reason": f"gone from this host ({name} was removed or detached)"})


def mark_gone(state: StateDir, name: str, *, source: str | None) -> list[str]:
    """Mark a disk that went away as gone in the journal; returns the keys of the entries marked or dropped."""
    with state.locked() as journal:
        applied = _followed(journal, source)
        if applied is None:
            return []
        touched: set[str] = set()
        for record in [r for r in journal.data.originals if _of_disk(r.tuner, r.target, name)]:
            if is_gone(record):
                forget_gone(journal, record, "hot-unplug")
                touched.add(record.key)
        gone = [gone_change(c, name) for c in applied.changes
                if _of_disk(c.tuner, c.target, name) and c.action in ("change", "ok")]
        if gone:
            journal.data.applied = applied.updated(gone, applied.txn)
            touched.update(c.key for c in gone)
        if touched:
            journal.save()
        return sorted(touched)
