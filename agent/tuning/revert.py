"""Revert: put every journaled original back, newest first, and forget the applied policy.

Revert is itself a journaled transaction and idempotent: each original is dropped from the journal only after
its restore has read back byte for byte, so a revert killed half-way is finished by the next revert (or by the
next apply, which runs revert's recovery first); a target that already holds its original costs no write.
A restore that fails keeps its record and the command exits non-zero naming it; the others still run.

A target someone else changed since hosttune last set it is skipped and reported with its current, expected
and original value (its record is kept); `force` restores it anyway. A target gone from the host (a renamed
block device) is dropped from the journal with a warning: there is nothing left to restore (ownership.py).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from agent.errors import HostError, HostTuneError, TargetGone
from agent.hostfs import HostPaths
from agent.tuners.registry import TunerSet
from agent.tuning.journal import Journal
from agent.tuning.ownership import Drift, drift_of, forget_gone
from agent.tuning.transaction import recover
from agent.tuning.weights import unstage_weights
from agent.tuning.writer import HostWriter


class RevertResult(BaseModel):
    restored: list[str] = Field(default_factory=list, description="targets written back to their original")
    unchanged: list[str] = Field(default_factory=list, description="targets that already held their original")
    failed: list[str] = Field(default_factory=list, description="'target: why' for restores that failed")
    skipped: list[Drift] = Field(default_factory=list, description="changed by someone else since hosttune set "
                                 "them: left as is, still journaled (revert --force restores them)")
    gone: list[str] = Field(default_factory=list, description="targets no longer on this host: dropped")
    recovered: str | None = None
    resumed: bool = Field(False, description="finished a revert that an earlier process had begun")
    writes: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


def revert_all(journal: Journal, writer: HostWriter, *, force: bool = False,
               tuner_set: TunerSet | None = None) -> RevertResult:
    """Restore all originals (the caller holds the state lock); `force` restores drifted targets too.
    `tuner_set`: the operation's tuners (a new set without NVML session when not given)."""
    tuner_set = tuner_set if tuner_set is not None else TunerSet()
    try:
        recovered = recover(journal, writer, tuner_set)
    except HostError as e:  # the originals below still cover every target the broken rollback left
        recovered = str(e)
    result = RevertResult(recovered=recovered)
    last = journal.data.txn  # an apply whose rollback failed left its own values: those are not someone else's
    unsettled = {w.key for w in last.writes} if last and last.kind == "apply" and last.status == "failed" else set()
    txn = journal.open_txn
    if txn is None and not journal.data.originals and journal.data.applied is None:
        return result
    if txn is not None and txn.kind == "revert":
        result.resumed = True
    else:
        journal.begin("revert", policy=journal.data.applied.policy if journal.data.applied else None)
    for record in list(reversed(journal.data.originals)):
        drift = None if force or record.key in unsettled else drift_of(record)
        if drift is not None:
            result.skipped.append(drift)
            continue
        before = writer.writes
        try:
            tuner_set.get(record.tuner).restore(record, writer)
        except TargetGone:
            forget_gone(journal, record, "revert")
            journal.save()
            result.gone.append(record.key)
            continue
        except (HostTuneError, OSError, KeyError) as e:
            result.failed.append(f"{record.key}: {e}")
            continue
        (result.restored if writer.writes > before else result.unchanged).append(record.key)
        journal.drop_original(record.key)
        journal.save()
    journal.finish("failed" if result.failed else "committed",
                   applied=journal.data.applied if result.failed else None,
                   error="; ".join(result.failed) or (f"left {len(result.skipped)} target(s) someone else changed"
                                                       if result.skipped else None))
    result.writes = writer.writes
    return result


def revert_with_weights(journal: Journal, writer: HostWriter, paths: HostPaths, *, force: bool = False,
                        tuner_set: TunerSet | None = None) -> RevertResult:
    """Remove weights staged in the pool, then revert_all: the staged file holds pool pages, so it goes before
    nr_hugepages shrinks (a worker still mapping it keeps its pages until it exits: the mount is detached lazily)."""
    staged = journal.data.staged.file if journal.data.staged is not None else None
    problems = unstage_weights(journal, paths) if staged is not None else []
    result = revert_all(journal, writer, force=force, tuner_set=tuner_set)
    if staged is not None:
        (result.failed.extend(f"staged weights: {p}" for p in problems) if problems
         else result.restored.append(f"staged weights {staged}"))
    return result
