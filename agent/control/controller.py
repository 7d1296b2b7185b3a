"""The controller: reads a tick, runs the control law, applies its actions, logs its decisions.

One APScheduler job calls `tick()` every `interval_s` (register_jobs). Worker events pushed by the actuator (an
out-of-memory crash) are handled at once, from the supervisor's thread, under the same lock, so a fallback does not
wait for the next tick nor for the supervisor's back-off to restart the old knobs first.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agent.control.actuators import KnobActuator, LimitActuator
from agent.control.config import ControllerConfig
from agent.control.core import Action, ControlCore, SetKnobs, SetLimit, WorkerEvent
from agent.control.decisions import Decision, DecisionLog
from agent.control.observe import Tick
from agent.control.os_trials import OsStep

log = logging.getLogger(__name__)
JOB_ID = "controller"   # the daemon reschedules this id when controller_interval_s changes


class TickSource(Protocol):
    def read(self) -> Tick: ...


class OsActuator(Protocol):
    """Runs an OS trial step through the journaled tuning engine (the daemon's: agent/daemon/os_actuator.py).
    Returns when done; raises when the step could not be made (the law then undoes the trial)."""

    def run(self, step: OsStep) -> None: ...


class Controller:
    def __init__(self, cfg: ControllerConfig, feed: TickSource, limit: LimitActuator,
                 knobs: KnobActuator | None = None, decision_log: DecisionLog | None = None,
                 clock: Callable[[], float] = time.monotonic, os_actuator: OsActuator | None = None) -> None:
        self.cfg = cfg
        self.feed = feed
        self.limit = limit
        self.knob_actuator = knobs
        self.os_actuator = os_actuator
        self.log = decision_log or DecisionLog(keep=cfg.max_decisions)
        self.clock = clock
        self._lock = threading.RLock()
        initial = knobs.knobs() if knobs is not None else {}
        if knobs is None:
            # No knob actuator: no slow lever, and the engine's capacity (slots, batch) is not known either — a
            # command worker's is not llama-server's default — so the fast lever does not assume one.
            cfg = cfg.model_copy(update={"slow_enabled": False, "concurrency_knob": None})
            self.cfg = cfg
        if os_actuator is None and cfg.os_trials:
            cfg = self.cfg = cfg.model_copy(update={"os_trials": []})  # nobody to apply them
        self.core = ControlCore(cfg, initial, max(cfg.min_limit, min(cfg.max_limit, limit.limit)), clock(),
                                next_id=self.log.last_id + 1)
        if self.core.limit != limit.limit:
            limit.set_limit(self.core.limit)
        self.ticks = 0
        self.last_tick: Tick | None = None
        self.os_skipped: dict[str, str] = {}   # OS trials the policy allows that do not apply here, and why
        if knobs is not None:
            knobs.subscribe(self._on_event)

    # ----- the job ------------------------------------------------------------------------------------------------

    def tick(self) -> list[Action]:
        """One control step. Never raises (it runs in the scheduler): a failure is logged and the next tick tries
        again."""
        with self._lock:
            try:
                t = self.feed.read()
                actions: list[Action] = []
                if self.knob_actuator is not None:
                    t = dataclasses.replace(t, worker_ready=t.worker_ready and self.knob_actuator.ready())
                    for ev in self.knob_actuator.poll():
                        actions += self._run(self.core.on_event(ev, t.t))
                actions += self._run(self.core.step(t))
                self.ticks += 1
                self.last_tick = t
                return actions
            except Exception:
                log.exception("controller tick failed")
                return []
            finally:
                self._flush()

    def _on_event(self, ev: WorkerEvent) -> None:
        with self._lock:
            log.warning("worker event %s: %s", ev.kind, ev.reason)
            try:
                self._run(self.core.on_event(ev, self.clock()))
            finally:
                self._flush()

    def _run(self, actions: list[Action]) -> list[Action]:
        for a in actions:
            if isinstance(a, SetLimit):
                self.limit.set_limit(a.limit)
            elif isinstance(a, SetKnobs):
                assert self.knob_actuator is not None
                try:
                    self.knob_actuator.apply(a.knobs, a.reason)
                except Exception as e:
                    log.exception("could not apply knobs %s", a.knobs)
                    return [*actions, *self._run(self.core.apply_failed(f"{type(e).__name__}: {e}"))]
            elif isinstance(a, OsStep):
                assert self.os_actuator is not None
                try:
                    self.os_actuator.run(a)
                except Exception as e:
                    log.exception("could not %s OS trial %s", a.op, a.trial.name)
                    if a.op == "keep":  # the law already settled it as kept: say it is gone
                        self.core.os_lost(a.trial, f"{type(e).__name__}: {e}")
                        return actions
                    return [*actions, *self._run(self.core.apply_failed(f"{type(e).__name__}: {e}"))]
        return actions

    def _flush(self) -> None:
        pending, self.core.pending = self.core.pending, []
        for d in pending:
            d = self.log.record(d)
            log.info("controller decision %d %s %s: %s -> %s (%s)%s", d.id, d.lever, d.action, d.before, d.after,
                     d.reason, f" => {d.outcome}: {d.outcome_reason}" if d.outcome_reason else "")

    # ----- views --------------------------------------------------------------------------------------------------

    def decisions(self) -> list[Decision]:
        return self.log.decisions()

    def status(self) -> dict[str, Any]:
        with self._lock:
            out = self.core.status()
            out.update(ticks=self.ticks, engine_live=getattr(self.knob_actuator, "live", None),
                       slo={"ttft_p95_ms": self.cfg.ttft_p95_ms, "itl_p95_ms": self.cfg.itl_p95_ms,
                            "memory_headroom_pct": self.cfg.memory_headroom_pct},
                       log=str(self.log.path) if self.log.path else None, os_trials_skipped=dict(self.os_skipped))
            return out

    def register_jobs(self, scheduler: Any, interval_s: float | None = None) -> Any:
        """Add the tick job to an APScheduler 3.x scheduler. coalesce + max_instances=1: a slow tick is skipped,
        never stacked."""
        every = interval_s or self.cfg.interval_s
        return scheduler.add_job(self.tick, "interval", seconds=every, id=JOB_ID, name="controller",
                                 coalesce=True, max_instances=1, misfire_grace_time=max(1, int(every)),
                                 replace_existing=True)

    def close(self) -> None:
        self.log.close()


def decisions_path(state_dir: Path) -> Path:
    return state_dir / "controller" / "decisions.jsonl"
