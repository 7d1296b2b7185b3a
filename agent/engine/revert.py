"""Revert: put every journaled original back, newest first, and forget the applied policy.

Revert is itself a journaled transaction and idempotent: each original is dropped from the journal only after
its restore has read back byte for byte, so a revert killed half-way is finished by the next revert (or by the
next apply, which runs revert's recovery first); a target that already holds its original costs no write.
A restore that fails keeps its record and the command exits non-zero naming it; the others still run.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from agent.engine.journal import Journal
from agent.engine.transaction import recover
from agent.engine.writer import HostWriter
from agent.errors import HostError, HostTuneError
from agent.tuners import registry


class RevertResult(BaseModel):
    restored: list[str] = Field(default_factory=list, description="targets written back to their original")
    unchanged: list[str] = Field(default_factory=list, description="targets that already held their original")
    failed: list[str] = Field(default_factory=list, description="'target: why' for restores that failed")
    recovered: str | None = None
    resumed: bool = Field(False, description="finished a revert that an earlier process had begun")
    writes: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


def revert_all(journal: Journal, writer: HostWriter) -> RevertResult:
    """Restore all originals (the caller holds the state lock)."""
    try:
        recovered = recover(journal, writer)
    except HostError as e:  # the originals below still cover every target the broken rollback left
        recovered = str(e)
    result = RevertResult(recovered=recovered)
    txn = journal.open_txn
    if txn is None and not journal.data.originals and journal.data.applied is None:
        return result
    if txn is not None and txn.kind == "revert":
        result.resumed = True
    else:
        journal.begin("revert", policy=journal.data.applied.policy if journal.data.applied else None)
    for record in list(reversed(journal.data.originals)):
        before = writer.writes
        try:
            registry.get(record.tuner).restore(record, writer)
        except (HostTuneError, OSError, KeyError) as e:
            result.failed.append(f"{record.key}: {e}")
            continue
        (result.restored if writer.writes > before else result.unchanged).append(record.key)
        journal.drop_original(record.key)
        journal.save()
    journal.finish("failed" if result.failed else "committed",
                   applied=journal.data.applied if result.failed else None,
                   error="; ".join(result.failed) or None)
    result.writes = writer.writes
    return result
