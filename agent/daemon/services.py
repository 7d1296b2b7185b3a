"""What the REST routes and the daemon's runner reach: the tuning service and the worker stack behind one facade.

The routes see `HostServices` (agent/api/deps.py); this class answers it by handing each call to the part that
owns it — host facts, policies and tuning to `TuningService` (agent/daemon/tuning_service.py, which owns the
mutation lock), the worker, gateway, telemetry and controller to `WorkerStack` (agent/daemon/worker_stack.py) —
and keeps what spans both: the event log, health, status and a SIGHUP reload.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from agent.api.schemas import PolicyRequest
from agent.config import DaemonSettings
from agent.daemon.events import EventLog
from agent.daemon.tuning_service import TuningService
from agent.daemon.worker_stack import WorkerStack

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler


class Services:
    """Facts, policies, tuning, worker, gateway, telemetry and controller, as the daemon and the API need them."""

    def __init__(self, settings: DaemonSettings) -> None:
        self.started_at = time.time()
        self.events = EventLog()
        self.tuning = TuningService(settings, self.events)
        self.stack = WorkerStack(settings, self.tuning, self.events)
        self._settings = settings

    @property
    def settings(self) -> DaemonSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: DaemonSettings) -> None:
        self._settings = self.tuning.settings = self.stack.settings = settings

    # -- what the routes call (agent.api.deps.HostServices) --------------------------------------------------------
    def facts(self) -> Any:
        return self.tuning.facts()

    def list_policies(self) -> list[dict[str, Any]]:
        return self.tuning.list_policies()

    def show_policy(self, name: str) -> dict[str, Any]:
        return self.tuning.show_policy(name)

    def plan(self, request: PolicyRequest) -> dict[str, Any]:
        return self.tuning.plan(request)

    def apply(self, request: PolicyRequest) -> dict[str, Any]:
        return self.tuning.apply(request)

    def revert(self, force: bool = False) -> dict[str, Any]:
        return self.tuning.revert(force)

    def changes(self, limit: int) -> list[dict[str, Any]]:
        return self.tuning.changes(limit)

    def verify(self) -> dict[str, Any]:
        return self.tuning.verify()

    def status(self) -> dict[str, Any]:
        out = self.tuning.status()
        out["daemon"] = {"started_at": self.started_at, "policy_ref": self.tuning.applied_ref,
                         "last_drift_check": self.tuning.last_drift, "events": self.events.recent(20)}
        return out

    def state_generation(self) -> int:
        return self.events.generation

    def worker(self) -> dict[str, Any]:
        return self.stack.worker()

    def restart_worker(self) -> dict[str, Any]:
        return self.stack.restart_worker()

    def telemetry(self, seconds: float) -> dict[str, Any]:
        return self.stack.telemetry_window(seconds)

    def controller(self) -> dict[str, Any]:
        return self.stack.controller_report()

    def performance(self, seconds: float) -> dict[str, Any]:
        return self.stack.performance(seconds)

    def metrics(self) -> str:
        return self.stack.metrics()

    def health(self) -> dict[str, Any]:
        worker_state = self.worker().get("state") if self.stack.supervisor is not None else "disabled"
        return {"status": "ok", "uptime_s": round(time.time() - self.started_at, 1), "worker": worker_state,
                "policy": self.tuning.applied_ref}

    # -- what the runner calls ------------------------------------------------------------------------------------
    def register_jobs(self, scheduler: BaseScheduler) -> None:
        """The services' scheduler jobs (telemetry); the controller's job is added by start_controller()."""
        self.stack.register_telemetry(scheduler)

    def reload(self, new: DaemonSettings) -> str:
        """SIGHUP: apply the new config's policy as a difference and restart the worker only if its spec changed.

        The engine's apply writes only tunables whose value differs (a second apply of the same policy writes
        nothing); tunables the old policy set and the new one no longer mentions are restored to their originals.
        """
        old_spec = None
        if self.tuning.applied_ref is not None:
            old_spec = self.tuning.load_policy_ref(self.tuning.applied_ref).policy.worker
        controller_was_enabled = self.settings.controller_enabled
        self.settings = new
        if not new.policy:
            return "no policy configured (host tuning left as is)"
        facts = self.tuning.host_facts()
        loaded = self.tuning.load_policy_ref(new.policy, facts)
        out = self.tuning.apply_loaded(loaded, facts)
        self.events.record("reload", policy=loaded.policy.name, writes=out["changed"])
        worker_note = self.stack.reload(loaded, old_spec, controller_was_enabled)
        return f"policy {loaded.policy.name}: {out['changed']} writes, {worker_note}"

    def reschedule(self, scheduler: BaseScheduler, old: DaemonSettings) -> None:
        if self.stack.telemetry is not None and self.stack.telemetry.host is not None:  # node_* on/off at once
            self.stack.telemetry.host.node_series = self.settings.telemetry.node_series
        if self.settings.telemetry_interval_s != old.telemetry_interval_s and scheduler.get_job("telemetry"):
            scheduler.reschedule_job("telemetry", trigger="interval", seconds=self.settings.telemetry_interval_s)
        if self.settings.controller_interval_s != old.controller_interval_s and scheduler.get_job("controller"):
            scheduler.reschedule_job("controller", trigger="interval", seconds=self.settings.controller_interval_s)
