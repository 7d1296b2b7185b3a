"""The engine's entry points, shared by the CLI commands and the daemon.

plan_policy   read-only: the plan, including stale originals an earlier apply left (when a state dir is given)
apply_policy  lock -> recover an interrupted transaction -> plan -> one transaction (see transaction.py)
revert        lock -> recover -> restore every original (see revert.py)
recover_only  lock -> recover, and remove weights a killed daemon left staged (the daemon calls this at start)
stage_weights / unstage_weights   lock -> the worker's weights into / out of a hugetlbfs mount (weights.py)
verify        read-only drift check of the applied policy
status        read-only: applied policy, when, journal state

`nvml`: the NVML session of whoever calls (the daemon's, the CLI's --nvml-sim one), handed to the GPU tuner of
the operation; None: that tuner opens the real library when it is first used (a policy without `gpu:` never).
Each operation builds its tuners once (TunerSet): planning, writing, rolling back and reverting use the same ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.model_files import resolve_model
from agent.policy.model import Policy, WorkerSpec
from agent.tuners.registry import TunerSet
from agent.tuning import weights
from agent.tuning.journal import Applied, HistoryEntry, StagedWeights, Txn
from agent.tuning.plan import Plan, make_plan
from agent.tuning.revert import RevertResult, revert_with_weights
from agent.tuning.state import StateDir
from agent.tuning.transaction import ApplyResult, apply_plan, recover
from agent.tuning.verify import VerifyResult, verify_applied
from agent.tuning.writer import HostWriter, crash_after_from_env

if TYPE_CHECKING:
    from agent.gpu.nvml import Nvml
    from agent.worker.privdrop import RunAs


def plan_policy(policy: Policy, paths: HostPaths, *, state: StateDir | None = None, facts: HostFacts | None = None,
                source: str | None = None, nvml: Nvml | None = None) -> Plan:
    journal = state.journal() if state is not None else None
    return make_plan(policy, facts, paths, journal=journal, source=source, tuners=TunerSet(nvml).enabled())


def apply_policy(policy: Policy, paths: HostPaths, state: StateDir, *, facts: HostFacts | None = None,
                 source: str | None = None, nvml: Nvml | None = None) -> ApplyResult:
    tuner_set = TunerSet(nvml)
    with state.locked() as journal:
        writer = HostWriter(journal, crash_after=crash_after_from_env())
        recovered = recover(journal, writer, tuner_set)
        plan = make_plan(policy, facts, paths, journal=journal, source=source, tuners=tuner_set.enabled())
        return apply_plan(plan, journal, writer, recovered=recovered, tuner_set=tuner_set)


def revert(state: StateDir, *, force: bool = False, nvml: Nvml | None = None,
           paths: HostPaths | None = None) -> RevertResult:
    """Every original back, and weights staged in the pool removed."""
    with state.locked() as journal:
        return revert_with_weights(journal, HostWriter(journal, crash_after=crash_after_from_env()),
                                   paths if paths is not None else HostPaths.live(), force=force,
                                   tuner_set=TunerSet(nvml))


def recover_only(state: StateDir, *, nvml: Nvml | None = None, paths: HostPaths | None = None) -> str | None:
    """At daemon start: no worker runs yet, so weights still staged are an orphan of a killed daemon."""
    with state.locked() as journal:
        note = recover(journal, HostWriter(journal, crash_after=crash_after_from_env()), TunerSet(nvml))
        orphan = journal.data.staged
        if orphan is None:
            return note
        problems = weights.unstage_weights(journal, paths if paths is not None else HostPaths.live())
        what = f"removed orphaned staged weights {orphan.file}" if not problems else \
            f"could not remove orphaned staged weights: {'; '.join(problems)}"
        return f"{note}; {what}" if note else what


def stage_weights(state: StateDir, worker: WorkerSpec, paths: HostPaths, *, gid: int | None,
                  model: Path | None = None, mount_dir: Path | None = None,
                  run_as: RunAs | None = None) -> StagedWeights:
    """Stage `worker`'s model (`model`: already resolved) in a new hugetlbfs mount, journaled; the pool must hold
    it (plan checked that). Replaces an earlier staging."""
    with state.locked() as journal:
        return weights.stage_weights(journal, model if model is not None else resolve_model(worker.model), paths,
                                     gid=gid, mount_dir=mount_dir, run_as=run_as)


def unstage_weights(state: StateDir, paths: HostPaths) -> list[str]:
    """Remove the staged weights and their mount (problems met; empty: gone or nothing staged)."""
    with state.locked() as journal:
        return weights.unstage_weights(journal, paths)


def verify(state: StateDir, *, nvml: Nvml | None = None) -> VerifyResult:
    return verify_applied(state.journal(), TunerSet(nvml))


class Status(BaseModel):
    state_dir: str
    applied: Applied | None = None
    last_txn: Txn | None = None
    interrupted: bool = Field(False, description="an open transaction: the next apply/revert rolls it back first")
    originals: int = Field(0, description="host values hosttune holds originals for (what revert restores)")
    history: list[HistoryEntry] = Field(default_factory=list)


def status(state: StateDir) -> Status:
    journal = state.journal()
    data = journal.data
    return Status(state_dir=str(state.path), applied=data.applied, last_txn=data.txn,
                  interrupted=journal.open_txn is not None, originals=len(data.originals), history=data.history)
