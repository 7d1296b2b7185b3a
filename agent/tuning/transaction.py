"""Apply a plan as one transaction, roll a transaction back, and recover from an interrupted one.

apply:    recover -> begin (journal: txn open) -> stale originals back -> each change through the writer ->
          settle (every planned value must hold at the end) -> commit (txn committed + applied state + what each
          written target holds now, one atomic journal rewrite). Any failure (KeyboardInterrupt too) rolls back
          every write of the transaction in reverse and raises naming the failing tunable.
signals:  SIGTERM during an apply (main thread) stops it before its next change and rolls back; further SIGTERMs
          cannot abort the rollback (the handler only notes them). Afterwards the signal is handed on to the
          handler that was installed before (the daemon's: it then stops), or, with the default disposition and a
          transaction that had already committed, re-raised so the process ends as asked.
rollback: restores each journaled before-value in reverse order, idempotently (re-running it after a crash in
          the middle writes the same values again), and forgets originals that this transaction added. A target
          that vanished meanwhile is gone: dropped with a warning, not a failure (see ownership.py).
recover:  run at the start of apply and revert (and by the daemon): an open apply found in the journal means the
          last process died mid-way; it is rolled back. An open revert is left for revert to finish.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType, TracebackType

from pydantic import BaseModel, Field

from agent.errors import HostError, HostTuneError, TargetGone, WriteFailed
from agent.tunable.change import Change
from agent.tuners.registry import TunerSet
from agent.tuning.journal import Applied, Journal, Txn
from agent.tuning.ownership import drift_of, forget_gone, remember_committed
from agent.tuning.plan import Plan
from agent.tuning.writer import HostWriter


class ApplyResult(BaseModel):
    policy: str
    txn: str
    writes: int = Field(description="host writes made by this command (recovery included)")
    recovered: str | None = Field(None, description="what was done about an interrupted transaction first")
    changes: list[Change]


class Interrupted(HostError):
    """SIGTERM while a transaction was open: rolled back."""


def rollback(journal: Journal, writer: HostWriter, tuner_set: TunerSet | None = None) -> list[str]:
    """Undo the open apply transaction. Returns the problems met (empty: the host is as before it).
    `tuner_set`: the operation's tuners (a new set without NVML session when not given)."""
    tuner_set = tuner_set if tuner_set is not None else TunerSet()
    txn = journal.open_txn
    if txn is None or txn.kind != "apply":
        raise RuntimeError("rollback() needs an open apply transaction")
    problems = []
    failed_keys = set()
    for record in reversed(txn.writes):
        try:
            tuner_set.get(record.tuner).restore(record, writer)
        except TargetGone:
            forget_gone(journal, record, "rollback")
        except (HostTuneError, OSError, KeyError) as e:
            problems.append(f"{record.key}: {e}")
            failed_keys.add(record.key)
    for key in txn.new_keys:
        if key not in failed_keys:
            journal.drop_original(key)
    journal.finish("failed" if problems else "rolled_back",
                   error="; ".join(problems) if problems else txn.error)
    return problems


def recover(journal: Journal, writer: HostWriter, tuner_set: TunerSet | None = None) -> str | None:
    """Roll back an interrupted apply. Returns a line saying what was done, or None when there was nothing."""
    txn = journal.open_txn
    if txn is None or txn.kind != "apply":
        return None
    txn.error = "interrupted (process died mid-apply)"
    problems = rollback(journal, writer, tuner_set)
    if problems:
        raise HostError(f"could not roll back the interrupted apply {txn.id}: {'; '.join(problems)}; "
                        f"run `hosttune revert`")
    return f"rolled back interrupted apply of {txn.policy} ({len(txn.writes)} writes, txn {txn.id})"


class SigtermGuard:
    """Notes SIGTERM while a transaction runs (main thread only; elsewhere the caller owns signals)."""

    def __init__(self) -> None:
        self.on_main = threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self.raised = False
        self._previous: signal.Handlers | object = None

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum  # never raise here: that could abort a rollback half-way

    def check(self) -> None:
        """Stop the apply here (between two changes) when a SIGTERM came."""
        if self.received is not None and not self.raised:
            self.raised = True
            raise Interrupted(f"interrupted by signal {self.received}")

    def __enter__(self) -> SigtermGuard:
        if self.on_main:
            self._previous = signal.signal(signal.SIGTERM, self._note)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.on_main:
            return
        previous = self._previous
        signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]
        if self.received is None:
            return
        if callable(previous):
            previous(self.received, None)
        elif previous == signal.SIG_DFL and exc is None:
            signal.raise_signal(self.received)


def apply_plan(plan: Plan, journal: Journal, writer: HostWriter, *, recovered: str | None = None,
               onto: Applied | None = None, tuner_set: TunerSet | None = None) -> ApplyResult:
    """Apply every writing change of `plan` in one transaction (the caller holds the state lock and has run
    recover()). Raises HostError naming the failing tunable after rolling everything back.
    `onto`: commit the plan's changes into this applied policy instead of replacing it (a partial plan: one
    hot-plugged disk, see hotplug.py). `tuner_set`: the operation's tuners, the plan's own (a new set without
    NVML session when not given)."""
    with SigtermGuard() as guard:
        txn = _run(plan, journal, writer, guard, onto, tuner_set if tuner_set is not None else TunerSet())
    return ApplyResult(policy=plan.policy, txn=txn.id, writes=writer.writes, recovered=recovered,
                       changes=plan.changes)


def _run(plan: Plan, journal: Journal, writer: HostWriter, guard: SigtermGuard, onto: Applied | None,
         tuner_set: TunerSet) -> Txn:
    txn = journal.begin("apply", policy=plan.policy)
    current: Change | None = None
    try:
        for change in plan.changes:
            if change.stale and change.writes:
                guard.check()
                current = change
                record = journal.original(change.key)
                if record is not None:
                    writer.remember_current(record)
                    with contextlib.suppress(TargetGone):  # vanished since the plan: dropped at commit
                        tuner_set.get(change.tuner).restore(record, writer)
        for change in plan.changes:
            if change.writes and not change.stale:
                guard.check()
                current = change
                tuner_set.get(change.tuner).apply(change, writer)
        for change in _unsettled(plan, tuner_set):
            guard.check()
            current = change
            tuner_set.get(change.tuner).apply(change, writer)
        current = None
        still = _unsettled(plan, tuner_set)
        if still:
            raise WriteFailed(still[0].target, "does not hold its value after the transaction "
                                               "(another setting resets it)")
        guard.check()
    except BaseException as e:
        what = f"{current.tuner} {current.target}" if current is not None else "commit"
        txn.error = f"{what}: {e}"
        problems = rollback(journal, writer, tuner_set)
        state = (f"rolled back {len(txn.writes)} writes" if not problems
                 else f"rollback incomplete ({'; '.join(problems)}); run `hosttune revert`")
        if isinstance(e, Interrupted):
            raise Interrupted(f"apply {e.message}; {state}") from e
        if isinstance(e, HostTuneError | OSError):
            field = current.field if current is not None else None
            detail = e.detail if isinstance(e, WriteFailed) else getattr(e, "message", str(e))
            raise HostError(f"apply failed at {what}: {detail}; {state}", field=field) from e
        raise
    for change in plan.changes:
        record = journal.original(change.key) if change.stale else None
        if record is not None and drift_of(record) is None:  # a drifted one stays: `revert --force` can restore it
            journal.drop_original(change.key)
    remember_committed(journal, txn)
    changes = [c for c in plan.changes if not c.stale]
    applied = Applied(policy=plan.policy, source=plan.source, txn=txn.id, changes=changes) if onto is None \
        else onto.updated(changes, txn.id)
    journal.finish("committed", applied=applied)
    return txn


def _unsettled(plan: Plan, tuner_set: TunerSet) -> list[Change]:
    """Planned values (change or ok) the host does not hold now, e.g. nr_requests reset by a scheduler restore."""
    out = []
    for change in plan.changes:
        if change.stale or change.action not in ("change", "ok") or change.reboot_required:
            continue
        tuner = tuner_set.get(change.tuner)
        if not tuner.satisfied(change, tuner.read(change)):
            out.append(change)
    return out
