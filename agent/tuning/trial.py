"""OS trials: a small set of tunable Changes applied as an apply transaction that stays open while the controller
measures it, then committed (kept) or rolled back (undone).

Why an open transaction: it is exactly what the journal already knows how to undo after a crash. If the daemon
dies during a trial (kill -9, OOM killer, power cut), the next start finds the open apply and rolls it back
(transaction.recover), so the host returns to what it held before the trial, byte for byte, without anything new
to remember. Any other mutation in the meantime (an API apply or revert, a drift re-apply, a reload) recovers
first and so ends the trial the same way; keep_trial then finds no open trial and says so.

The trial's transaction is named `trial:<name>` (Txn.policy). Keeping it commits its changes into the applied
policy (as a hot-plugged disk is, Applied.updated), so verify holds them and revert restores their originals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.errors import HostError, HostTuneError, InputError
from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.policy.model import Policy
from agent.tunable.change import Change
from agent.tuners.registry import TunerSet
from agent.tuning.journal import Applied, Journal
from agent.tuning.ownership import remember_committed
from agent.tuning.plan import make_plan
from agent.tuning.state import StateDir
from agent.tuning.transaction import recover, rollback
from agent.tuning.writer import HostWriter, crash_after_from_env

if TYPE_CHECKING:
    from agent.gpu.nvml import Nvml

TRIAL_PREFIX = "trial:"
MAX_TRIAL_CHANGES = 64  # a trial is one lever: a handful of files (one per cpufreq policy at most)


def trial_txn_name(name: str) -> str:
    return TRIAL_PREFIX + name


def open_trial(journal: Journal) -> str | None:
    """The name of the trial whose transaction is open, if any."""
    txn = journal.open_txn
    if txn is None or txn.kind != "apply" or not (txn.policy or "").startswith(TRIAL_PREFIX):
        return None
    return (txn.policy or "")[len(TRIAL_PREFIX):]


def kept_trials(journal: Journal) -> set[str]:
    """The trials kept into the applied policy: a controller started later does not try them again (its builders
    would see the kept value as the host's and try the reverse). A new apply or a revert forgets them."""
    applied = journal.data.applied
    return set(applied.trials) if applied is not None else set()


def _plan(fragment: Policy, paths: HostPaths, facts: HostFacts | None, tuner_set: TunerSet) -> list[Change]:
    """The fragment's own changes only (no stale originals: those belong to the applied policy)."""
    changes = make_plan(fragment, facts, paths, tuners=tuner_set.enabled()).changes
    if len(changes) > MAX_TRIAL_CHANGES:
        raise InputError(f"an OS trial may change at most {MAX_TRIAL_CHANGES} tunables, this one {len(changes)}")
    bad = [c for c in changes if c.action == "unsupported" or c.reboot_required]
    if bad:
        raise InputError(f"{bad[0].target}: not a change an OS trial can make ({bad[0].reason or bad[0].action})",
                         field=bad[0].field)
    return changes


def begin_trial(name: str, fragment: Policy, paths: HostPaths, state: StateDir, *, facts: HostFacts | None = None,
                nvml: Nvml | None = None) -> list[Change]:
    """Apply `fragment`'s changes in a transaction left open. Returns the changes (action "change" = written).
    Raises HostError (after rolling back its own writes) when a write fails, InputError when the fragment does
    not fit this host. Nothing to write (already so, or not applicable) still opens the trial, so keep and end
    stay uniform."""
    tuner_set = TunerSet(nvml)
    with state.locked() as journal:
        writer = HostWriter(journal, crash_after=crash_after_from_env())
        recover(journal, writer, tuner_set)
        changes = _plan(fragment, paths, facts, tuner_set)
        txn = journal.begin("apply", policy=trial_txn_name(name))
        current: Change | None = None
        try:
            for current in (c for c in changes if c.writes):
                tuner_set.get(current.tuner).apply(current, writer)
        except BaseException as e:
            txn.error = f"{current.tuner} {current.target}: {e}" if current is not None else str(e)
            problems = rollback(journal, writer, tuner_set)
            if isinstance(e, HostTuneError | OSError):
                state_note = "rolled back" if not problems else f"rollback incomplete ({'; '.join(problems)})"
                raise HostError(f"OS trial {name} failed: {txn.error}; {state_note}") from e
            raise
        return changes


def keep_trial(name: str, fragment: Policy, paths: HostPaths, state: StateDir, *, facts: HostFacts | None = None,
               nvml: Nvml | None = None) -> str:
    """Commit the open trial `name` into the applied policy. Raises HostError when it is not open any more."""
    tuner_set = TunerSet(nvml)
    with state.locked() as journal:
        if open_trial(journal) != name:
            raise HostError(f"OS trial {name} is not open any more (another apply, revert or restart ended it)")
        txn = journal.open_txn
        assert txn is not None
        changes = [c for c in _plan(fragment, paths, facts, tuner_set) if c.action in ("ok", "change")]
        unheld = [c for c in changes if c.action == "change"]
        if unheld:
            raise HostError(f"OS trial {name}: {unheld[0].target} no longer holds {unheld[0].value!r}")
        remember_committed(journal, txn)
        applied = journal.data.applied
        applied = Applied(policy=txn.policy or name, txn=txn.id, changes=changes) if applied is None \
            else applied.updated(changes, txn.id)
        applied = applied.model_copy(update={"trials": [*(t for t in applied.trials if t != name), name]})
        journal.finish("committed", applied=applied)
        return txn.id


def end_trial(name: str, state: StateDir, *, nvml: Nvml | None = None) -> bool:
    """Roll back the open trial `name`. False when it was not open (already ended: nothing to undo)."""
    tuner_set = TunerSet(nvml)
    with state.locked() as journal:
        if open_trial(journal) != name:
            return False
        txn = journal.open_txn
        assert txn is not None
        txn.error = "the controller rolled the trial back"
        problems = rollback(journal, HostWriter(journal, crash_after=crash_after_from_env()), tuner_set)
        if problems:
            raise HostError(f"could not roll back OS trial {name}: {'; '.join(problems)}; run `hosttune revert`")
        return True
