"""The daemon's serving side: the supervised worker, the gateway in front of it (through the controller's drain),
telemetry, and the controller — started in that order, stopped in reverse.

The gateway and telemetry reach the worker through one `SupervisedWorker` that follows whichever supervisor runs
now, so a reload that replaces the worker needs no re-wiring. The web stack, telemetry and the controller are
imported when they start: a daemon without a worker carries none of them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from agent.api.exceptions import Unavailable
from agent.config import DaemonSettings
from agent.daemon.events import EventLog
from agent.daemon.jsonable import jsonable
from agent.daemon.tuning_service import TuningService
from agent.errors import HostError, InputError
from agent.gateway.upstream import SupervisedWorker
from agent.inspect.models import HostFacts
from agent.policy.loader import LoadedPolicy
from agent.policy.model import Policy, WorkerSpec

log = logging.getLogger("hosttune.daemon")

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from agent.control.controller import Controller
    from agent.control.drain import Drain
    from agent.gateway.app import Gateway
    from agent.gateway.server import GatewayServer
    from agent.telemetry.collector import Telemetry
    from agent.telemetry.daemon_state import DaemonState
    from agent.worker.engines import Engine
    from agent.worker.prepare import PreparedWorker
    from agent.worker.smaps import WorkerMemory
    from agent.worker.supervisor import Supervisor
    from agent.worker.torch_control import TorchWorkerControl


@dataclass
class RunningGateway:
    """The gateway app (its stats and admission gate: what the controller moves) and the server serving it."""

    app: Gateway
    server: GatewayServer

    @property
    def url(self) -> str:
        return self.server.url


class WorkerStack:
    def __init__(self, settings: DaemonSettings, tuning: TuningService, events: EventLog) -> None:
        self.settings = settings
        self.tuning = tuning  # host facts to place the worker on, policy file:line for its errors
        self.events = events
        self.supervisor: Supervisor | None = None
        self.policy: Policy | None = None  # the policy whose worker runs (its slo drives the controller)
        self.policy_since = time.time()  # when `policy` took over (a reload): GET /v1/performance's window opens
        self.engine: Engine | None = None  # the engine adapter that launched it (torch: the control client)
        self.gateway: RunningGateway | None = None
        self.drain: Drain | None = None  # between the gateway and the worker: a controller restart drains first
        self.telemetry: Telemetry | None = None
        self.controller: Controller | None = None
        self.scheduler: BaseScheduler | None = None
        self._torch_control: TorchWorkerControl | None = None
        self._decisions_before: Counter[tuple[str, str]] = Counter()  # stopped controllers' decisions (/metrics)
        self.endpoint = SupervisedWorker(current=lambda: self.supervisor)

    # -- worker ---------------------------------------------------------------------------------------------------
    def start_worker(self, loaded: LoadedPolicy, facts: HostFacts | None = None) -> None:
        """Place and start the policy's worker under the supervisor; wait until it answers (ready_timeout_s)."""
        from agent.worker.prepare import prepare_worker
        from agent.worker.privdrop import resolve_run_as
        from agent.worker.status import WorkerState
        from agent.worker.supervisor import RestartPolicy, Supervisor

        spec = loaded.policy.worker
        assert spec is not None, "start_worker needs a policy with a worker section"
        ws = self.settings.worker
        headroom = loaded.policy.slo.memory_headroom_pct if loaded.policy.slo is not None else 10.0
        run_as = resolve_run_as(ws.user)  # a daemon config field: not located in the policy
        try:
            prepared = prepare_worker(spec, facts if facts is not None else self.tuning.host_facts(),
                                      paths=self.tuning.paths, headroom_pct=headroom, allow_remote=ws.allow_remote,
                                      run_as=run_as)
            prepared.build(prepared.spec)  # argv errors surface now, with the policy's file:line
        except InputError as e:
            raise self.tuning.located(loaded, e) from None
        self._stage_weights(loaded, prepared, facts)
        policy = RestartPolicy(
            ready_timeout_s=ws.ready_timeout_s, stop_timeout_s=ws.stop_timeout_s,
            backoff_initial_s=ws.backoff_initial_s, backoff_max_s=ws.backoff_max_s,
            crashloop_count=ws.crashloop_count, crashloop_window_s=ws.crashloop_window_s)
        sup = Supervisor(prepared.spec, prepared.build, state_dir=self.tuning.state_dir, policy=policy,
                         paths=self.tuning.paths)
        self.supervisor = sup
        self.policy, self.policy_since = loaded.policy, time.time()
        self.engine = prepared.engine
        sup.start()
        self.events.record("worker_start", engine=spec.engine, placement=prepared.placement.node)
        if not sup.wait_for({WorkerState.READY, WorkerState.FAILED}, timeout=ws.ready_timeout_s + 5) \
                or sup.state != WorkerState.READY:
            status = sup.status()
            raise HostError(f"the worker did not become ready: state {status.state}, "
                            f"{status.last_exit_reason or status.reason or 'no reason given'}")

    def _stage_weights(self, loaded: LoadedPolicy, prepared: PreparedWorker, facts: HostFacts | None) -> None:
        """worker.weights.backing hugetlbfs, and `plan` found the policy's weights pool usable: stage the model in
        it and launch on the copy. Otherwise (plan said why) or when staging fails, the engine maps the GGUF from
        the page cache, as without the setting."""
        from agent.tunable.weights_pool import weights_pool_blocker

        spec = prepared.spec
        if spec.engine != "llamacpp" or spec.weights.backing != "hugetlbfs" or prepared.model is None:
            return
        pools = [p for p in loaded.policy.hugepages if p.for_weights]
        why = "no hugepages entry has for_weights: true" if not pools else weights_pool_blocker(
            loaded.policy, pools[0], facts, self.tuning.paths)
        if why is None:
            try:
                prepared.staged_model = self.tuning.stage_weights(
                    spec, prepared.model, prepared.run_as)
                prepared.build(prepared.spec)
                return
            except (HostError, InputError) as e:
                why = str(e)
                if prepared.staged_model is not None:  # staged, but no launch builds on it: back to the page cache
                    prepared.staged_model = None
                    problems = self.tuning.unstage_weights()
                    if problems:
                        why += f"; the staged copy stays until the next unstage: {'; '.join(problems)}"
        log.warning("weights stay in the page cache: %s", why)
        self.events.record("weights_not_staged", reason=why)

    def respawn_worker(self, loaded: LoadedPolicy) -> str:
        """A reload changed the worker section: start, restart or stop the worker to match it."""
        from agent.worker.prepare import check_host

        spec = loaded.policy.worker
        if spec is None or not self.settings.worker.enabled:
            self.stop_worker()
            return "worker stopped (not configured)"
        if self.supervisor is None:
            self.start_worker(loaded)
            return "worker started"
        try:  # refuse the reload, rather than restart into a worker that fails its build
            check_host(spec, self.settings.worker.allow_remote)
        except InputError as e:
            raise self.tuning.located(loaded, e) from None
        self.supervisor.restart(spec, reason="reload: worker spec changed")
        self.events.record("worker_restart", reason="reload: worker spec changed")
        return "worker restarted (spec changed)"

    def reload(self, loaded: LoadedPolicy, old_spec: WorkerSpec | None, controller_was_enabled: bool) -> str:
        """After a reload applied `loaded`: the worker only if its spec changed, the controller only if the
        worker, its SLO or controller_enabled did."""
        new_spec = loaded.policy.worker
        note = "worker unchanged"
        if new_spec != old_spec:
            note = self.respawn_worker(loaded)
        old_policy, self.policy = self.policy, (loaded.policy if self.supervisor else None)
        self.policy_since = time.time()
        if (old_policy.slo if old_policy else None, old_spec, controller_was_enabled) != \
                (self.policy.slo if self.policy else None, new_spec, self.settings.controller_enabled):
            note += "; " + self.restart_controller()
        return note

    def stop_worker(self) -> None:
        if self.supervisor is not None:
            status = self.supervisor.stop()
            self.events.record("worker_stop", state=str(status.state), last_exit=status.last_exit)
            self.supervisor = None
            self.policy = None
        problems = self.tuning.unstage_weights()  # the worker is gone: its staged weights go back to the pool
        if problems:
            log.warning("staged weights left behind: %s", "; ".join(problems))

    def worker(self) -> dict[str, Any]:
        if self.supervisor is None:
            return {"state": "disabled", "reason": "no worker configured (policy worker section, worker.enabled)"}
        return dict(jsonable(self.supervisor.status()))

    def worker_memory(self) -> WorkerMemory | None:
        """The supervisor's latest smaps_rollup reading of the worker (the telemetry's memory series)."""
        return self.supervisor.status().memory if self.supervisor is not None else None

    def restart_worker(self) -> dict[str, Any]:
        if self.supervisor is None:
            raise Unavailable("no worker is configured in this daemon")
        self.supervisor.restart()
        self.events.record("worker_restart", reason="api")
        return self.worker()

    # -- gateway --------------------------------------------------------------------------------------------------
    def start_gateway(self) -> None:
        """The OpenAI-compatible gateway in front of the supervised worker, with its own uvicorn thread."""
        from agent.control.drain import Drain
        from agent.gateway.app import Gateway
        from agent.gateway.server import GatewayServer

        g = self.settings.gateway
        self.drain = Drain()  # a controller restart drains replies in progress first
        app = Gateway(self.drain.wrap(self.endpoint), g.settings())
        # slot affinity, cache_prompt and shedding follow the running worker's spec and the policy's SLO
        app.levers.follow(lambda: (self.supervisor.spec if self.supervisor else None,
                                   self.policy.slo if self.policy else None))
        server = GatewayServer(app.app(), host=g.host, port=g.port, allow_remote=g.allow_remote,
                               limits=g.server_limits(g.host))
        server.start()
        self.gateway = RunningGateway(app, server)
        self.events.record("gateway_start", url=server.url)

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.server.stop()
            self.gateway = None

    # -- telemetry ------------------------------------------------------------------------------------------------
    def register_telemetry(self, scheduler: BaseScheduler) -> None:
        """Telemetry at telemetry_interval_s: host always, the worker's metrics and the gateway's latencies when
        they run. Only registers the job: the controller starts with start_controller()."""
        from agent.telemetry.collector import build_telemetry
        from agent.telemetry.daemon_state import DaemonStatePart
        from agent.telemetry.host import HostSampler
        from agent.telemetry.worker import WorkerSampler

        telemetry = build_telemetry(gateway=self.gateway.app.stats if self.gateway is not None else None,
                                    gpu=self.tuning.nvml())
        telemetry.host = HostSampler(node_series=self.settings.telemetry.node_series)
        telemetry.worker = WorkerSampler(self.endpoint, memory=self.worker_memory)
        telemetry.parts.append(DaemonStatePart(self.daemon_state))
        telemetry.register_jobs(scheduler, interval_s=self.settings.telemetry_interval_s)
        self.telemetry = telemetry
        self.scheduler = scheduler

    def telemetry_window(self, seconds: float) -> dict[str, Any]:
        if self.telemetry is None:
            raise Unavailable("telemetry is not running in this daemon")
        samples = self.telemetry.recent(seconds)
        return {"interval_s": self.settings.telemetry_interval_s, "count": len(samples),
                "samples": jsonable(samples)}

    def metrics(self) -> str:
        return self.telemetry.exposition() if self.telemetry is not None else ""

    def daemon_state(self) -> DaemonState:
        """What the daemon's own series say (agent/telemetry/daemon_state.py), read at each scrape."""
        from agent import __version__
        from agent.daemon.metrics_state import controller_knobs, decisions_taken, worker_info
        from agent.telemetry.daemon_state import DaemonState

        tuning, sup, ctl = self.tuning, self.supervisor, self.controller
        drift = tuning.last_drift
        latest = self.telemetry.latest() if self.telemetry is not None else None
        slots = latest.worker.slots_total if latest is not None and latest.worker is not None else None
        st = sup.status() if sup is not None else None
        return DaemonState(
            version=__version__, policy=tuning.applied_state,
            last_apply_at=tuning.last_apply[0] if tuning.last_apply else None,
            last_apply_ok=tuning.last_apply[1] if tuning.last_apply else None,
            drift_checked_at=drift["time"] if drift else None, drift_targets=drift["drifted"] if drift else None,
            worker=worker_info(sup.spec, st.restarts, slots, st.crashes) if sup is not None and st else None,
            decisions=decisions_taken(ctl, self._decisions_before),
            knobs=controller_knobs(ctl) if ctl is not None else None)

    def performance(self, seconds: float) -> dict[str, Any]:
        """What the gateway served in the last `seconds`, under the policy in force and the worker ready now only
        (agent/gateway/performance.py): the rollout's performance gate reads it before and after a change."""
        from agent.gateway.performance import window_figures

        sup, gateway = self.supervisor, self.gateway
        ready = sup is not None and sup.wait_ready(0)  # cleared at once by a restart, set when the new one answers
        ready_at = sup.status().ready_at if sup is not None and ready else None
        wall, mono = time.time(), time.monotonic()
        opened = max(self.policy_since, ready_at or 0.0) if ready else wall
        out: dict[str, Any] = {"seconds": seconds, "serving": sup is not None and gateway is not None,
                               "worker_ready": ready, "policy": self.policy.name if self.policy else None,
                               "now": round(wall, 3), "since": round(max(opened, wall - seconds), 3)}
        stats = gateway.app.stats if gateway is not None else None  # no gateway: nothing served
        records = stats.recent_records() if stats is not None else []  # copied under the stats lock
        figures = window_figures(records, now=mono, seconds=seconds, since=mono - (wall - opened),
                                 capacity=stats.recent.maxlen if stats is not None else None)
        return out | asdict(figures)

    # -- controller -----------------------------------------------------------------------------------------------
    def start_controller(self) -> str:
        """Build the controller for the running worker and add its job; says why not when it cannot run."""
        from agent.control.os_trials import os_trials_for
        from agent.control.wiring import build_controller
        from agent.daemon.os_actuator import TuningOsActuator

        why_not = self.controller_blocker()
        if why_not is not None:
            self.events.record("controller_off", reason=why_not)
            return f"controller off: {why_not}"
        policy, sup, gateway, scheduler = self.policy, self.supervisor, self.gateway, self.scheduler
        assert policy is not None and policy.slo is not None and sup is not None and gateway is not None \
            and scheduler is not None  # controller_blocker() said so
        spec = sup.spec
        # Knobs move only where hosttune knows the engine's flags (llama-server by restart, torch live); a
        # command worker gets the fast lever alone.
        restartable: Callable[[], Supervisor | None] | None = \
            (lambda: self.supervisor) if spec.engine == "llamacpp" else None
        torch_control = None
        if spec.engine == "torch":
            from agent.worker.torch_engine import TorchEngine

            if isinstance(self.engine, TorchEngine):
                torch_control = self.engine.control_client(spec)
        os_trials, os_skipped = os_trials_for(policy.controller, self.tuning.host_facts())
        ctl = build_controller(policy.slo, gateway.app, engine=spec.engine, telemetry=self.telemetry,
                               supervisor=restartable, torch_control=torch_control, state_dir=self.tuning.state_dir,
                               drain=self.drain, watch_gpu=spec.gpu_layers != 0, worker=spec,
                               placement=sup.status().placement, os_trials=os_trials,
                               os_actuator=TuningOsActuator(self.tuning))
        ctl.os_skipped = os_skipped
        ctl.core.os_kept |= self.tuning.kept_os_trials()   # kept before a restart: not flipped back
        ctl.register_jobs(scheduler, interval_s=self.settings.controller_interval_s)
        self.controller = ctl
        self._torch_control = torch_control
        self.events.record("controller_start", engine=spec.engine, ttft_p95_ms=policy.slo.ttft_p95_ms,
                           interval_s=self.settings.controller_interval_s)
        return "controller on"

    def controller_blocker(self) -> str | None:
        if not self.settings.controller_enabled:
            return "controller_enabled is false in the daemon config"
        if self.supervisor is None or self.policy is None:
            return "no worker runs"
        if self.gateway is None:
            return "no gateway runs (the controller moves the gateway's admission limit)"
        slo = self.policy.slo
        if slo is None or slo.ttft_p95_ms is None:
            return f"policy {self.policy.name} sets no slo.ttft_p95_ms (nothing to defend)"
        if self.scheduler is None:
            return "the scheduler is not running"
        return None

    def stop_controller(self) -> None:
        ctl, self.controller = self.controller, None
        if ctl is None:
            return
        self._decisions_before += ctl.log.taken()
        if self.scheduler is not None and self.scheduler.get_job("controller") is not None:
            self.scheduler.remove_job("controller")
        ctl.close()
        if (trial := self.tuning.end_os_trial()) is not None:   # its measurement stopped with it
            self.events.record("os_trial_undone", trial=trial, reason="the controller stopped during the trial")
        control, self._torch_control = self._torch_control, None
        if control is not None:
            control.close()

    def restart_controller(self) -> str:
        """A reload changed the worker or its SLO: the controller starts over from the new policy's settings."""
        self.stop_controller()
        return self.start_controller()

    def controller_report(self) -> dict[str, Any]:
        ctl = self.controller
        if ctl is None:
            return {"enabled": False, "reason": self.controller_blocker() or "not started", "decisions": []}
        return {"enabled": True, "status": jsonable(ctl.status()), "decisions": jsonable(ctl.decisions())}

    def stop(self) -> None:
        """Controller, gateway, worker: the reverse of the start order."""
        self.stop_controller()
        self.stop_gateway()
        self.stop_worker()
