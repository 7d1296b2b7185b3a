"""Host facts, policies and tuning (plan, apply, verify, revert, status) as the daemon and its API need them.

Every host mutation (apply, revert, rollback, drift re-apply, reload) goes through `_mutate`: the daemon's main
loop runs it under this service's lock, so an API request, the drift job and a SIGHUP reload never interleave their
writes — and no thread holds the lock while it waits for the loop (a SIGHUP reload runs there and would wait for
it forever).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from agent.api.exceptions import Conflict, NotFound
from agent.api.schemas import PolicyRequest
from agent.config import DaemonSettings
from agent.daemon.events import EventLog
from agent.daemon.jsonable import jsonable
from agent.daemon.metrics_state import policy_state
from agent.daemon.submitted import SubmittedPolicies, inline_text
from agent.errors import HostError, InputError
from agent.gpu.nvml import Nvml, open_nvml
from agent.hostfs import HostPaths
from agent.inspect import collect
from agent.inspect.models import HostFacts
from agent.policy.loader import LoadedPolicy, list_policies, load_policy, load_policy_text
from agent.policy.model import Policy, WorkerSpec
from agent.telemetry.daemon_state import PolicyState
from agent.tuning import api as engine
from agent.tuning.state import StateDir, StateLocked
from agent.tuning.transaction import ApplyResult
from agent.tuning.trial import begin_trial, end_trial, keep_trial, kept_trials, open_trial
from agent.worker.privdrop import RunAs

T = TypeVar("T")


class MutationRunner(Protocol):
    """Runs a host mutation and returns its result: inline, or on the daemon's main loop (MainLoop.call)."""

    def __call__(self, fn: Callable[[], T]) -> T: ...


def run_inline(fn: Callable[[], T]) -> T:
    return fn()


class TuningService:
    def __init__(self, settings: DaemonSettings, events: EventLog) -> None:
        self.settings = settings
        self.events = events
        self.paths: HostPaths = settings.host_paths()
        self.state_dir = settings.state_dir
        self.submitted = SubmittedPolicies(settings.state_dir)
        self.lock = threading.RLock()
        self.last_drift: dict[str, Any] | None = None
        self.applied_ref: str | None = None
        self.applied_state: PolicyState | None = None    # what /metrics says of the policy applied (until a revert)
        self.last_apply: tuple[float, bool] | None = None  # when this daemon last applied a policy, and if it held
        self._nvml: Nvml | None = None
        # How host mutations run: inline here; the daemon hands them to its main-thread loop (see mainloop.py).
        self.run_mutation: MutationRunner = run_inline

    # -- facts and policies -------------------------------------------------------------------------------------
    def nvml(self) -> Nvml:
        """The daemon's one NVML session (lazy: the library initialises on first use), handed to inspection,
        the tuning engine (its GPU tuner) and the worker stack."""
        if self._nvml is None:
            self._nvml = open_nvml(self.settings.nvml_sim)
        return self._nvml

    def host_facts(self) -> HostFacts:
        return collect(self.paths, nvml=self.nvml())

    def facts(self) -> Any:
        return jsonable(self.host_facts())

    def load_policy_ref(self, ref: str | Path, facts: HostFacts | None = None) -> LoadedPolicy:
        """A name or path; a body kept from an earlier API submission is loaded under the inline rules again."""
        model_dirs = self.settings.inline_model_dirs() if self.submitted.contains(ref) else None
        return load_policy(ref, facts if facts is not None else self.host_facts(), model_dirs=model_dirs)

    def list_policies(self) -> list[dict[str, Any]]:
        return [jsonable(p) for p in list_policies()]

    def _known_policy(self, name: str) -> None:
        if name not in {p.name for p in list_policies()}:
            raise NotFound(f"no policy named {name!r} on the search path", field="name")

    def show_policy(self, name: str) -> dict[str, Any]:
        self._known_policy(name)
        loaded = self.load_policy_ref(name)
        return {"policy": jsonable(loaded.policy), "source": str(loaded.source),
                "chain": [str(p) for p in loaded.chain],
                "locations": {k: f"{v[0]}:{v[1]}" for k, v in loaded.locations.items()}}

    def load_request(self, request: PolicyRequest, facts: HostFacts | None = None) -> LoadedPolicy:
        """A policy named, or submitted inline, loaded through the same loader (and checks) as policy files.

        Inline text is validated from the text under the inline rules (agent/policy/inline.py) before anything is
        written; its errors carry a line number. Only apply() keeps it, under STATE_DIR/api-policies/ (submitted.py).
        """
        if request.name is not None:
            self._known_policy(request.name)
            return self.load_policy_ref(request.name, facts)
        text = inline_text(request.yaml, request.policy)
        try:
            return load_policy_text(text, self.submitted.path_for(text),
                                    facts if facts is not None else self.host_facts(),
                                    model_dirs=self.settings.inline_model_dirs())
        except InputError as e:
            raise self._public(e) from None

    def _public(self, e: InputError) -> InputError:
        """Name the request body rather than our internal copy of it; keep the line and field."""
        if e.path and self.submitted.contains(e.path):
            e.path = "request body"
        return e

    def located(self, loaded: LoadedPolicy, e: InputError) -> InputError:
        """A plan-time InputError names a policy field; add the policy file:line, as the CLI does."""
        return self._public(loaded.locate(e))

    # -- tuning ---------------------------------------------------------------------------------------------------
    def _state(self) -> StateDir:
        return StateDir(self.state_dir)

    def _mutate(self, fn: Callable[[], T]) -> T:
        """Every host mutation: on the daemon's main loop (inline elsewhere), under the lock taken by whoever runs
        it. Never held while waiting for the loop: a SIGHUP reload runs there and would wait for it forever."""
        def locked() -> T:
            with self.lock:
                return fn()
        return self.run_mutation(locked)

    @staticmethod
    def _conflict(e: HostError) -> HostError:
        if isinstance(e, StateLocked):
            return Conflict(e.message, path=e.path)
        return e

    def plan(self, request: PolicyRequest) -> dict[str, Any]:
        facts = self.host_facts()
        return self.plan_loaded(self.load_request(request, facts), facts)

    def plan_loaded(self, loaded: LoadedPolicy, facts: HostFacts | None = None) -> dict[str, Any]:
        facts = facts if facts is not None else self.host_facts()
        try:
            plan = engine.plan_policy(loaded.policy, self.paths, state=self._state(), facts=facts,
                                      source=str(loaded.source), nvml=self.nvml())
        except InputError as e:
            raise self.located(loaded, e) from None
        out: dict[str, Any] = jsonable(plan)
        out["counts"] = plan.counts()
        out["summary"] = plan.summary()
        return out

    def apply(self, request: PolicyRequest) -> dict[str, Any]:
        facts = self.host_facts()
        loaded = self.load_request(request, facts)
        if request.name is not None:
            return self.apply_loaded(loaded, facts)
        # Valid: keep the body so the applied state names a file that exists; a failed apply keeps nothing new.
        # Kept, applied and pruned in one mutation (under the lock, on the main loop), so a concurrent apply of
        # the same body cannot remove the file under it. The lock is never taken here, around the wait for the
        # loop: the loop takes it for the mutation, and would wait for this thread forever.
        return self.apply_loaded(loaded, facts, keep_text=inline_text(request.yaml, request.policy))

    def _journal_source(self) -> str | None:
        applied = engine.status(self._state()).applied
        return applied.source if applied is not None else None

    def apply_loaded(self, loaded: LoadedPolicy, facts: HostFacts | None = None, *,
                     keep_text: str | None = None) -> dict[str, Any]:
        """Apply as one transaction; tunables an earlier policy set and this one drops are restored (the diff).
        `facts`: the host facts the policy was resolved against (collected again when not given).
        `keep_text`: an API body, kept under STATE_DIR/api-policies/ as `loaded.source` by the same mutation."""
        facts = facts if facts is not None else self.host_facts()
        state = self._state()
        nvml = self.nvml()

        def mutation() -> ApplyResult:
            if keep_text is None:
                return engine.apply_policy(loaded.policy, self.paths, state, facts=facts, source=str(loaded.source),
                                           nvml=nvml)
            created = self.submitted.keep(loaded.source, keep_text)
            try:
                done = engine.apply_policy(loaded.policy, self.paths, state, facts=facts, source=str(loaded.source),
                                           nvml=nvml)
            except BaseException:
                if created:
                    self.submitted.forget(loaded.source)
                raise
            self.submitted.prune(protect=[str(loaded.source), self.applied_ref, self._journal_source()])
            return done

        result: ApplyResult | None = None
        try:
            result = self._mutate(mutation)
        except InputError as e:
            raise self.located(loaded, e) from None
        except HostError as e:
            raise self._conflict(e) from None
        finally:
            self.last_apply = (time.time(), result is not None)
            self.events.bump()  # even a failed apply may have journaled a rolled-back transaction
        out: dict[str, Any] = jsonable(result)
        out["changed"] = result.writes
        self.applied_ref = str(loaded.source)
        self.applied_state = policy_state(loaded, result.changes)
        self.events.record("apply", policy=loaded.policy.name, writes=result.writes)
        return out

    def revert(self, force: bool = False) -> dict[str, Any]:
        """Restore the originals; targets someone else changed are skipped (listed in `skipped`) unless `force`."""
        state, nvml = self._state(), self.nvml()
        try:
            result = self._mutate(lambda: engine.revert(state, force=force, nvml=nvml,
                                                                paths=self.paths))
        except HostError as e:
            raise self._conflict(e) from None
        finally:
            self.events.bump()
        out: dict[str, Any] = jsonable(result)
        out["ok"] = result.ok
        self.applied_ref = None
        self.applied_state = None
        self.events.record("revert", restored=len(result.restored), failed=len(result.failed))
        if result.failed:
            raise HostError("revert could not restore: " + "; ".join(result.failed))
        return out

    def rollback_interrupted(self) -> str | None:
        state, nvml = self._state(), self.nvml()
        note = self._mutate(lambda: engine.recover_only(state, nvml=nvml, paths=self.paths))
        if note:
            self.events.record("rollback", note=note)
        return note

    def stage_weights(self, worker: WorkerSpec, model: Path, run_as: RunAs | None) -> Path:
        """The worker's weights staged in the hugepage pool (journaled); the path to launch the engine on."""
        staged = self._mutate(lambda: engine.stage_weights(self._state(), worker, self.paths, model=model,
                                                                gid=run_as.gid if run_as else None, run_as=run_as))
        self.events.record("weights_staged", file=staged.file, pages=staged.pages)
        return Path(staged.file)

    def unstage_weights(self) -> list[str]:
        return self._mutate(lambda: engine.unstage_weights(self._state(), self.paths))

    def status(self) -> dict[str, Any]:
        return dict(jsonable(engine.status(self._state())))

    def changes(self, limit: int) -> list[dict[str, Any]]:
        """Journal history (transactions: apply/revert, status, writes), newest first."""
        history: list[dict[str, Any]] = jsonable(engine.status(self._state()).history)
        return list(reversed(history))[:limit]

    def verify(self) -> dict[str, Any]:
        result = engine.verify(self._state(), nvml=self.nvml())
        out: dict[str, Any] = jsonable(result)
        out["ok"] = result.ok
        out["drifted"] = [jsonable(i) for i in result.drift]
        out["summary"] = result.summary()
        return out

    def drift_check(self, reapply: bool) -> dict[str, Any]:
        """The scheduler's drift job: verify, and re-apply the applied policy when asked and something drifted.
        Never while the controller's OS trial is open: re-applying recovers first, which would end the trial (its
        own targets are not drift; other drift waits for the next check after the trial)."""
        report = self.verify()
        drifted = report["drifted"]
        self.last_drift = {"time": time.time(), "drifted": len(drifted), "trial": report.get("trial")}
        self.events.bump()
        if drifted:
            self.events.record("drift", tunables=len(drifted),
                               targets=",".join(str(c["target"]) for c in drifted[:5]))
            if reapply and self.applied_ref and report.get("trial") is None:
                facts = self.host_facts()
                self.apply_loaded(self.load_policy_ref(self.applied_ref, facts), facts)
        return self.last_drift

    def os_trial(self, op: Literal["apply", "keep", "undo"], name: str, fragment: Policy) -> None:
        """The controller's OS trial steps (agent/tuning/trial.py): apply opens a transaction of the fragment's
        changes, keep commits it into the applied policy, undo rolls it back. A mutation like any other: on the
        main loop, under the lock; a crash while it is open is rolled back at the next start."""
        state, nvml = self._state(), self.nvml()

        def mutation() -> None:
            if op == "apply":
                begin_trial(name, fragment, self.paths, state, nvml=nvml)
            elif op == "keep":
                keep_trial(name, fragment, self.paths, state, nvml=nvml)
            else:
                end_trial(name, state, nvml=nvml)

        try:
            self._mutate(mutation)
        except HostError as e:
            raise self._conflict(e) from None
        finally:
            self.events.bump()
        self.events.record("os_trial", op=op, trial=name)

    def kept_os_trials(self) -> set[str]:
        """OS trials kept into the applied policy (journaled): a new controller does not try them again."""
        return kept_trials(self._state().journal())

    def end_os_trial(self) -> str | None:
        """Roll back an OS trial left open (the controller stopped mid-trial: reload, daemon stop). Returns its name,
        or None when none was open."""
        name = open_trial(self._state().journal())
        if name is None:
            return None
        self.os_trial("undo", name, Policy(name="os-trial"))
        return name
