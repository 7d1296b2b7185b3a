"""The one place where the daemon (and its API) call into the other parts of hosttune.

Why one adapter: inspection, policies, the tuning engine, the worker supervisor, the gateway and telemetry are
separate packages with their own APIs; the daemon's runner and the REST routes only see this class. Every host
mutation (apply, revert, rollback, drift re-apply, reload) goes through `_mutate`: the daemon's main loop runs it
under one lock, so an API request, the drift job and a SIGHUP reload never interleave their writes and no thread
holds the lock while it waits for the loop.

Parts are imported lazily: a build without one of them (no engine yet, no gateway) still serves everything else and
answers 503 `unavailable` for what is missing, with the reason.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.api.exceptions import Conflict, NotFound, Unavailable
from agent.api.schemas import PolicyRequest
from agent.config import DaemonSettings
from agent.daemon.submitted import SubmittedPolicies, inline_text
from agent.errors import HostError, InputError
from agent.hostfs import HostPaths
from agent.tuning.state import StateLocked

log = logging.getLogger(__name__)


def _import(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise Unavailable(f"{what} is not available in this build ({e})") from None


def _dump(obj: Any) -> Any:
    """JSON-able form of pydantic models, dataclasses, lists of them."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _dump(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [_dump(o) for o in obj]
    if isinstance(obj, dict):
        return {str(k): _dump(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


class Services:
    """Facts, policies, tuning, worker, gateway, telemetry and controller, as the daemon and the API need them."""

    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.paths: HostPaths = settings.host_paths()
        self.state_dir = settings.state_dir
        self.submitted = SubmittedPolicies(settings.state_dir)
        self.lock = threading.RLock()
        self.started_at = time.time()
        self.events: deque[dict[str, Any]] = deque(maxlen=200)
        self.generation = 0  # bumped by every event: readers of a cached status know it moved
        self.last_drift: dict[str, Any] | None = None
        self.applied_ref: str | None = None
        self.worker_supervisor: Any = None
        self.gateway: Any = None
        self.gateway_obj: Any = None
        self.telemetry_store: Any = None
        self.controller_obj: Any = None
        self.worker_policy: Any = None   # the policy whose worker runs (its slo drives the controller)
        self.worker_engine: Any = None   # the engine adapter that launched it (torch: the control client)
        self.drain: Any = None           # agent.control.drain.Drain between the gateway and the worker
        self._scheduler: Any = None
        self._torch_control: Any = None
        self._nvml: Any = None
        # How host mutations run: inline here; the daemon hands them to its main-thread loop (see mainloop.py).
        self.run_mutation: Callable[[Callable[[], Any]], Any] = lambda fn: fn()

    # -- bookkeeping --------------------------------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        record = {"time": time.time(), "kind": kind, **fields}
        self.events.append(record)
        self.generation += 1
        log.info("%s %s", kind, " ".join(f"{k}={v}" for k, v in fields.items()))

    # -- facts and policies -------------------------------------------------------------------------------------
    def nvml(self) -> Any:
        if self._nvml is None:
            try:
                nvml_mod = importlib.import_module("agent.gpu.nvml")
                self._nvml = nvml_mod.open_nvml(self.settings.nvml_sim)
            except ImportError:
                self._nvml = None
        return self._nvml

    def host_facts(self) -> Any:
        inspect = _import("agent.inspect", "host inspection")
        return inspect.collect(self.paths, nvml=self.nvml())

    def facts(self) -> Any:
        return _dump(self.host_facts())

    def _loader(self) -> Any:
        return _import("agent.policy.loader", "the policy loader")

    def load_policy_ref(self, ref: str | Path, facts: Any = None) -> Any:
        """A name or path; a body kept from an earlier API submission is loaded under the inline rules again."""
        model_dirs = self.settings.inline_model_dirs() if self.submitted.contains(ref) else None
        return self._loader().load_policy(ref, facts if facts is not None else self.host_facts(),
                                          model_dirs=model_dirs)

    def list_policies(self) -> list[dict[str, Any]]:
        return [_dump(p) for p in self._loader().list_policies()]

    def _known_policy(self, name: str) -> None:
        names = {getattr(p, "name", None) for p in self._loader().list_policies()}
        if name not in names:
            raise NotFound(f"no policy named {name!r} on the search path", field="name")

    def show_policy(self, name: str) -> dict[str, Any]:
        self._known_policy(name)
        loaded = self.load_policy_ref(name)
        return {"policy": _dump(loaded.policy), "source": str(loaded.source),
                "chain": [str(p) for p in loaded.chain],
                "locations": {k: f"{v[0]}:{v[1]}" for k, v in getattr(loaded, "locations", {}).items()}}

    def load_request(self, request: PolicyRequest, facts: Any = None) -> Any:
        """A policy named, or submitted inline, loaded through the same loader (and checks) as policy files.

        Inline text is validated from the text under the inline rules (agent/policy/inline.py) before anything is
        written; its errors carry a line number. Only apply() keeps it, under STATE_DIR/api-policies/ (submitted.py).
        """
        if request.name is not None:
            self._known_policy(request.name)
            return self.load_policy_ref(request.name, facts)
        text = inline_text(request.yaml, request.policy)
        try:
            return self._loader().load_policy_text(text, self.submitted.path_for(text),
                                                   facts if facts is not None else self.host_facts(),
                                                   model_dirs=self.settings.inline_model_dirs())
        except InputError as e:
            raise self._public(e) from None

    def _public(self, e: InputError) -> InputError:
        """Name the request body rather than our internal copy of it; keep the line and field."""
        if e.path and self.submitted.contains(e.path):
            e.path = "request body"
        return e

    # -- tuning ---------------------------------------------------------------------------------------------------
    def _engine(self) -> Any:
        return _import("agent.tuning.api", "the tuning engine")

    def _state(self) -> Any:
        state_mod = _import("agent.tuning.state", "the tuning engine")
        return state_mod.StateDir(self.state_dir)

    def _located(self, loaded: Any, e: InputError) -> InputError:
        """A tuner's plan-time InputError names a policy field; add the policy file:line, as the CLI does."""
        if e.path is None and e.field and hasattr(loaded, "where"):
            where = loaded.where(e.field)
            if where is not None:
                e.path, e.line = str(where[0]), where[1]
        return self._public(e)

    def _mutate(self, fn: Callable[[], Any]) -> Any:
        """Every host mutation: on the daemon's main loop (inline elsewhere), under the lock taken by whoever runs
        it. Never held while waiting for the loop: a SIGHUP reload runs there and would wait for it forever."""
        def locked() -> Any:
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

    def plan_loaded(self, loaded: Any, facts: Any = None) -> dict[str, Any]:
        facts = facts if facts is not None else self.host_facts()
        try:
            plan = self._engine().plan_policy(loaded.policy, self.paths, state=self._state(),
                                              facts=facts, source=str(loaded.source))
        except InputError as e:
            raise self._located(loaded, e) from None
        out: dict[str, Any] = _dump(plan)
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
        applied = getattr(self._engine().status(self._state()), "applied", None)
        return getattr(applied, "source", None)

    def apply_loaded(self, loaded: Any, facts: Any = None, *, keep_text: str | None = None) -> dict[str, Any]:
        """Apply as one transaction; tunables an earlier policy set and this one drops are restored (the diff).
        `facts`: the host facts the policy was resolved against (collected again when not given).
        `keep_text`: an API body, kept under STATE_DIR/api-policies/ as `loaded.source` by the same mutation."""
        facts = facts if facts is not None else self.host_facts()
        engine, state = self._engine(), self._state()

        def mutation() -> Any:
            if keep_text is None:
                return engine.apply_policy(loaded.policy, self.paths, state, facts=facts, source=str(loaded.source))
            created = self.submitted.keep(loaded.source, keep_text)
            try:
                done = engine.apply_policy(loaded.policy, self.paths, state, facts=facts, source=str(loaded.source))
            except BaseException:
                if created:
                    self.submitted.forget(loaded.source)
                raise
            self.submitted.prune(protect=[str(loaded.source), self.applied_ref, self._journal_source()])
            return done

        try:
            result = self._mutate(mutation)
        except InputError as e:
            raise self._located(loaded, e) from None
        except HostError as e:
            raise self._conflict(e) from None
        finally:
            self.generation += 1  # even a failed apply may have journaled a rolled-back transaction
        out: dict[str, Any] = _dump(result)
        out["changed"] = result.writes
        self.applied_ref = str(loaded.source)
        self.event("apply", policy=loaded.policy.name, writes=result.writes)
        return out

    def revert(self, force: bool = False) -> dict[str, Any]:
        """Restore the originals; targets someone else changed are skipped (listed in `skipped`) unless `force`."""
        engine, state = self._engine(), self._state()
        try:
            result = self._mutate(lambda: engine.revert(state, force=force))
        except HostError as e:
            raise self._conflict(e) from None
        finally:
            self.generation += 1
        out: dict[str, Any] = _dump(result)
        out["ok"] = result.ok
        self.applied_ref = None
        self.event("revert", restored=len(result.restored), failed=len(result.failed))
        if result.failed:
            raise HostError("revert could not restore: " + "; ".join(result.failed))
        return out

    def rollback_interrupted(self) -> str | None:
        engine, state = self._engine(), self._state()
        note: str | None = self._mutate(lambda: engine.recover_only(state))
        if note:
            self.event("rollback", note=note)
        return note

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = _dump(self._engine().status(self._state()))
        out["daemon"] = {"started_at": self.started_at, "policy_ref": self.applied_ref,
                         "last_drift_check": self.last_drift, "events": list(self.events)[-20:]}
        return out

    def state_generation(self) -> int:
        return self.generation

    def changes(self, limit: int) -> list[dict[str, Any]]:
        """Journal history (transactions: apply/revert, status, writes), newest first."""
        history: list[dict[str, Any]] = _dump(self._engine().status(self._state()).history)
        return list(reversed(history))[:limit]

    def verify(self) -> dict[str, Any]:
        result = self._engine().verify(self._state())
        out: dict[str, Any] = _dump(result)
        out["ok"] = result.ok
        out["drifted"] = [_dump(i) for i in result.drift]
        out["summary"] = result.summary()
        return out

    def drift_check(self, reapply: bool) -> dict[str, Any]:
        """The scheduler's drift job: verify, and re-apply the applied policy when asked and something drifted."""
        try:
            report = self.verify()
        except Unavailable:
            return {"skipped": "no tuning engine"}
        drifted = report["drifted"]
        self.last_drift = {"time": time.time(), "drifted": len(drifted)}
        self.generation += 1
        if drifted:
            self.event("drift", tunables=len(drifted), targets=",".join(str(c["target"]) for c in drifted[:5]))
            if reapply and self.applied_ref:
                facts = self.host_facts()
                self.apply_loaded(self.load_policy_ref(self.applied_ref, facts), facts)
        return self.last_drift

    # -- reload ---------------------------------------------------------------------------------------------------
    def reload(self, new: DaemonSettings) -> str:
        """SIGHUP: apply the new config's policy as a difference and restart the worker only if its spec changed.

        The engine's apply writes only tunables whose value differs (a second apply of the same policy writes
        nothing); tunables the old policy set and the new one no longer mentions are restored to their originals.
        """
        old_spec = None
        if self.applied_ref is not None:
            old_spec = getattr(self.load_policy_ref(self.applied_ref).policy, "worker", None)
        controller_was_enabled = self.settings.controller_enabled
        self.settings = new
        if not new.policy:
            return "no policy configured (host tuning left as is)"
        facts = self.host_facts()
        loaded = self.load_policy_ref(new.policy, facts)
        out = self.apply_loaded(loaded, facts)
        self.event("reload", policy=loaded.policy.name, writes=out["changed"])
        new_spec = getattr(loaded.policy, "worker", None)
        worker_note = "worker unchanged"
        if new_spec != old_spec:
            worker_note = self._respawn_worker(loaded)
        old_policy, self.worker_policy = self.worker_policy, (loaded.policy if self.worker_supervisor else None)
        if (getattr(old_policy, "slo", None), old_spec, controller_was_enabled) != \
                (getattr(self.worker_policy, "slo", None), new_spec, new.controller_enabled):
            worker_note += "; " + self.restart_controller()
        return f"policy {loaded.policy.name}: {out['changed']} writes, {worker_note}"

    def reschedule(self, scheduler: Any, old: DaemonSettings) -> None:
        if self.settings.telemetry_interval_s != old.telemetry_interval_s and scheduler.get_job("telemetry"):
            scheduler.reschedule_job("telemetry", trigger="interval", seconds=self.settings.telemetry_interval_s)
        if self.settings.controller_interval_s != old.controller_interval_s and scheduler.get_job("controller"):
            scheduler.reschedule_job("controller", trigger="interval", seconds=self.settings.controller_interval_s)

    # -- worker, gateway, telemetry, controller ----------------------------------------------------------------
    def start_worker(self, loaded: Any, facts: Any = None) -> None:
        """Place and start the policy's worker under the supervisor; wait until it answers (ready_timeout_s)."""
        spec = loaded.policy.worker
        prepare = _import("agent.worker.prepare", "the worker")
        supervisor_mod = _import("agent.worker.supervisor", "the worker supervisor")
        ws = self.settings.worker
        headroom = loaded.policy.slo.memory_headroom_pct if loaded.policy.slo is not None else 10.0
        privdrop = _import("agent.worker.privdrop", "the worker")
        run_as = privdrop.resolve_run_as(ws.user)  # a daemon config field: not located in the policy
        try:
            prepared = prepare.prepare_worker(spec, facts if facts is not None else self.host_facts(),
                                              paths=self.paths, headroom_pct=headroom,
                                              allow_remote=ws.allow_remote,
                                              run_as=run_as)
            prepared.build(prepared.spec)  # argv errors surface now, with the policy's file:line
        except InputError as e:
            raise self._located(loaded, e) from None
        policy = supervisor_mod.RestartPolicy(
            ready_timeout_s=ws.ready_timeout_s, stop_timeout_s=ws.stop_timeout_s,
            backoff_initial_s=ws.backoff_initial_s, backoff_max_s=ws.backoff_max_s,
            crashloop_count=ws.crashloop_count, crashloop_window_s=ws.crashloop_window_s)
        sup = supervisor_mod.Supervisor(prepared.spec, prepared.build, state_dir=self.state_dir, policy=policy,
                                        paths=self.paths)
        self.worker_supervisor = sup
        self.worker_policy = loaded.policy
        self.worker_engine = prepared.engine
        sup.start()
        self.event("worker_start", engine=spec.engine, placement=getattr(prepared.placement, "node", None))
        if not sup.wait_for({"ready", "failed"}, timeout=ws.ready_timeout_s + 5) or sup.state != "ready":
            status = sup.status()
            raise HostError(f"the worker did not become ready: state {status.state}, "
                            f"{status.last_exit_reason or status.reason or 'no reason given'}")

    def _respawn_worker(self, loaded: Any) -> str:
        spec = getattr(loaded.policy, "worker", None)
        if spec is None or not self.settings.worker.enabled:
            self.stop_worker()
            return "worker stopped (not configured)"
        if self.worker_supervisor is None:
            self.start_worker(loaded)
            return "worker started"
        try:  # refuse the reload, rather than restart into a worker that fails its build
            _import("agent.worker.prepare", "the worker").check_host(spec, self.settings.worker.allow_remote)
        except InputError as e:
            raise self._located(loaded, e) from None
        self.worker_supervisor.restart(spec, reason="reload: worker spec changed")
        self.event("worker_restart", reason="reload: worker spec changed")
        return "worker restarted (spec changed)"

    def stop_worker(self) -> None:
        if self.worker_supervisor is not None:
            status = self.worker_supervisor.stop()
            self.event("worker_stop", state=str(status.state), last_exit=status.last_exit)
            self.worker_supervisor = None
            self.worker_policy = None

    def start_gateway(self) -> None:
        """The OpenAI-compatible gateway in front of the supervised worker, with its own uvicorn thread."""
        gw_app = _import("agent.gateway.app", "the gateway")
        gw_settings = _import("agent.gateway.settings", "the gateway")
        gw_server = _import("agent.gateway.server", "the gateway")
        g = self.settings.gateway
        settings = gw_settings.GatewaySettings(limit=g.limit, max_queue=g.max_queue, queue_timeout_s=g.queue_timeout_s)
        drain_mod = _import("agent.control.drain", "the controller")
        self.drain = drain_mod.Drain()  # a controller restart drains replies in progress first
        gateway = gw_app.Gateway(self.drain.wrap(SupervisedEndpoint(self)), settings)
        server = gw_server.GatewayServer(gateway.app(), host=g.host, port=g.port, allow_remote=g.allow_remote,
                                         limits=g.server_limits(g.host))
        server.start()
        self.gateway_obj = gateway
        self.gateway = server
        self.event("gateway_start", url=server.url)

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
            self.gateway_obj = None

    def register_jobs(self, scheduler: Any) -> None:
        """Telemetry at telemetry_interval_s: host always, the worker's metrics and the gateway's latencies when
        they run; the controller at controller_interval_s when a worker runs behind the gateway and its policy
        has an SLO."""
        collector = _import("agent.telemetry.collector", "telemetry")
        worker_mod = _import("agent.telemetry.worker", "telemetry")
        stats = self.gateway_obj.stats if self.gateway_obj is not None else None
        telemetry = collector.build_telemetry(gateway=stats, gpu=self.nvml())
        telemetry.worker = worker_mod.WorkerSampler(SupervisedEndpoint(self))
        telemetry.register_jobs(scheduler, interval_s=self.settings.telemetry_interval_s)
        self.telemetry_store = telemetry
        self._scheduler = scheduler
        self.start_controller()

    def start_controller(self) -> str:
        """Build the controller for the running worker and add its job; says why not when it cannot run."""
        why_not = self._controller_blocker()
        if why_not is not None:
            self.event("controller_off", reason=why_not)
            return f"controller off: {why_not}"
        wiring = _import("agent.control.wiring", "the controller")
        policy, sup = self.worker_policy, self.worker_supervisor
        spec = sup.spec
        # Knobs move only where hosttune knows the engine's flags (llama-server by restart, torch live); a
        # command worker gets the fast lever alone.
        restartable = (lambda: self.worker_supervisor) if spec.engine == "llamacpp" else None
        torch_control = None
        if spec.engine == "torch" and hasattr(self.worker_engine, "control_client"):
            torch_control = self.worker_engine.control_client(spec)
        ctl = wiring.build_controller(policy.slo, self.gateway_obj, engine=spec.engine,
                                      telemetry=self.telemetry_store, supervisor=restartable,
                                      torch_control=torch_control, state_dir=self.state_dir, drain=self.drain,
                                      watch_gpu=self.nvml() is not None and spec.gpu_layers != 0)
        ctl.register_jobs(self._scheduler, interval_s=self.settings.controller_interval_s)
        self.controller_obj = ctl
        self._torch_control = torch_control
        self.event("controller_start", engine=spec.engine, ttft_p95_ms=policy.slo.ttft_p95_ms,
                   interval_s=self.settings.controller_interval_s)
        return "controller on"

    def _controller_blocker(self) -> str | None:
        if not self.settings.controller_enabled:
            return "controller_enabled is false in the daemon config"
        if self.worker_supervisor is None or self.worker_policy is None:
            return "no worker runs"
        if self.gateway_obj is None:
            return "no gateway runs (the controller moves the gateway's admission limit)"
        slo = getattr(self.worker_policy, "slo", None)
        if slo is None or slo.ttft_p95_ms is None:
            return f"policy {self.worker_policy.name} sets no slo.ttft_p95_ms (nothing to defend)"
        if self._scheduler is None:
            return "the scheduler is not running"
        return None

    def stop_controller(self) -> None:
        ctl, self.controller_obj = self.controller_obj, None
        if ctl is None:
            return
        if self._scheduler is not None and self._scheduler.get_job("controller") is not None:
            self._scheduler.remove_job("controller")
        ctl.close()
        control, self._torch_control = self._torch_control, None
        if control is not None:
            control.close()

    def restart_controller(self) -> str:
        """A reload changed the worker or its SLO: the controller starts over from the new policy's settings."""
        self.stop_controller()
        return self.start_controller()

    def worker(self) -> dict[str, Any]:
        if self.worker_supervisor is None:
            return {"state": "disabled", "reason": "no worker configured (policy worker section, worker.enabled)"}
        return _dump(self.worker_supervisor.status())

    def restart_worker(self) -> dict[str, Any]:
        if self.worker_supervisor is None:
            raise Unavailable("no worker is configured in this daemon")
        self.worker_supervisor.restart()
        self.event("worker_restart", reason="api")
        return self.worker()

    def telemetry(self, seconds: float) -> dict[str, Any]:
        if self.telemetry_store is None:
            raise Unavailable("telemetry is not running in this daemon")
        samples = self.telemetry_store.recent(seconds)
        return {"interval_s": self.settings.telemetry_interval_s, "count": len(samples), "samples": _dump(samples)}

    def controller(self) -> dict[str, Any]:
        ctl = self.controller_obj
        if ctl is None:
            return {"enabled": False, "reason": self._controller_blocker() or "not started", "decisions": []}
        return {"enabled": True, "status": _dump(ctl.status()), "decisions": _dump(ctl.decisions())}

    def metrics(self) -> str:
        if self.telemetry_store is None:
            return ""
        text: str = self.telemetry_store.exposition()
        return text

    def health(self) -> dict[str, Any]:
        worker_state = self.worker().get("state") if self.worker_supervisor is not None else "disabled"
        return {"status": "ok", "uptime_s": round(time.time() - self.started_at, 1), "worker": worker_state,
                "policy": self.applied_ref}


class SupervisedEndpoint:
    """The gateway's and telemetry's view of the worker (agent.gateway.upstream.WorkerEndpoint): whatever
    supervisor the services hold right now, so a reload that replaces the worker needs no re-wiring."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def base_url(self) -> str | None:
        sup = self.services.worker_supervisor
        return sup.base_url if sup is not None else None

    def pid(self) -> int | None:
        sup = self.services.worker_supervisor
        return sup.pid if sup is not None else None

    def is_ready(self) -> bool:
        sup = self.services.worker_supervisor
        return sup is not None and sup.state == "ready"

    def report_failure(self) -> None:
        # The supervisor's own liveness probe decides about restarts; one failed request is not evidence enough.
        log.debug("gateway reported a failed request to the worker")
