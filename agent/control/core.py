"""The control law, pure: ticks and worker events in, actions and decisions out. No threads, no I/O, no clock of
its own (time is the ticks' `t`), so recorded traces replay it exactly.

Two levers share it:
- fast: the admission limit (agent.control.admission), every tick;
- slow: engine knobs, one step at a time along the ladder. A step is tried only from a steady, saturated baseline
  (measure_s of ready ticks with a queue), measured after the worker is ready again and has settled, and kept only
  if tokens/s rose by more than the dead band with the SLO held; otherwise the previous knobs come back and the
  step is tabu for tabu_s. A cooldown separates steps. Then OS trials (os_trials.py), one at a time and never with
  a knob step (confounded effects); a neutral one the policy marks required is kept; a kept one is not retried.
- out of memory (a worker crash that says so, or headroom under the floor) overrides both: a trial in progress is
  undone, otherwise the next rung of the fallback ladder is taken at once, without waiting for the cooldown.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from agent.control.actions import Action, SetKnobs, SetLimit, WorkerEvent
from agent.control.admission import AdmissionState, LimitProposal, accept, breach, propose_limit
from agent.control.config import ControllerConfig
from agent.control.decisions import Decision, Outcome
from agent.control.ladder import Knobs, candidates, concurrency_ratio, step_down, value
from agent.control.observe import Measurement, Tick, measure
from agent.control.os_trials import OsStep, OsTrial, next_os_trial
from agent.control.trial_record import Trial, step_key, undo_os


class Phase(enum.StrEnum):
    BASELINE = "baseline"    # running the current knobs, waiting for a steady window to step from
    TRIAL = "trial"          # a step is applied; waiting for ready, settling, measuring
    RECOVER = "recover"      # a rollback or fallback is applied; waiting for the worker to be ready


def _diff(a: Knobs, b: Knobs) -> str:
    return ", ".join(f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


@dataclass
class ControlCore:
    cfg: ControllerConfig
    knobs: Knobs
    limit: int
    now: float
    next_id: int = 1
    phase: Phase = Phase.BASELINE
    trial: Trial | None = None
    tabu: dict[str, float] = field(default_factory=dict)
    pending: list[Decision] = field(default_factory=list)   # new or changed decisions, for the log

    def __post_init__(self) -> None:
        self.knobs = dict(self.knobs)
        self.adm = AdmissionState(limit=self.limit)
        self.ticks: deque[Tick] = deque()
        self.regime_t = self.now              # when the current knobs started serving
        self.cooldown_until = self.now
        self.fallback_hold_until = -math.inf
        self.recover_since: float | None = None
        self.converged_tps: float | None = None
        self.bottomed_out = False
        self.slow_note = "starting"          # why the slow lever is not stepping right now (status, debugging)
        self.pinned_since: float | None = None   # the slow lever holds the admission limit for its baseline
        self.pin_retry_at = -math.inf
        self.last_baseline: tuple[Knobs, int, Measurement] | None = None
        self.serving_since = self.now        # when the worker last became ready (restart transients end here)
        self._was_ready = True
        self.os_kept: set[str] = set()       # OS trials kept: not tried again

    # ----- inputs -------------------------------------------------------------------------------------------------

    def step(self, tick: Tick) -> list[Action]:
        self.now = tick.t
        self.ticks.append(tick)
        while self.ticks and self.ticks[0].t < tick.t - self.cfg.history_s:
            self.ticks.popleft()
        if tick.worker_ready and not self._was_ready:
            self.serving_since = self.now
        self._was_ready = tick.worker_ready
        self._recovered(tick)
        actions = self._memory(tick)
        if not actions and self.cfg.slow_enabled:
            actions = self._slow(tick)
        if self.cfg.fast_enabled and not any(isinstance(a, SetKnobs) for a in actions):
            actions += self._fast(tick)
        return actions

    def on_event(self, ev: WorkerEvent, now: float) -> list[Action]:
        self.now = max(self.now, now)
        if ev.kind == "oom":
            return self._fallback(f"worker out of memory: {ev.reason}", ev.knobs)
        if self.trial is not None:
            return self._rollback(f"worker {'gave up' if ev.kind == 'failed' else 'crashed'} with the new knobs: "
                                  f"{ev.reason}")
        return []

    def apply_failed(self, reason: str) -> list[Action]:
        """The actuator refused or failed a change: undo a trial; otherwise nothing changed."""
        if self.trial is not None:
            return self._rollback(f"could not apply the step: {reason}", outcome="aborted")
        return []

    def status(self) -> dict[str, Any]:
        return {"phase": self.phase.value, "knobs": dict(self.knobs), "limit": self.adm.limit,
                "cooldown_left_s": round(max(0.0, self.cooldown_until - self.now), 1),
                "trial": None if (tr := self.trial) is None else {  # knobs; an OS trial's change is os_trial
                    "decision": tr.decision.id, "os": tr.os and tr.os.name, "from": tr.from_knobs, "to": tr.to_knobs},
                "os_trial": None if tr is None or tr.os is None else {
                    "decision": tr.decision.id, "name": tr.os.name, "from": tr.os.before, "to": tr.os.after},
                "tabu": {k: round(v - self.now, 1) for k, v in self.tabu.items() if v > self.now},
                "os_trials": {t.name: "kept" if t.name in self.os_kept else "pending" for t in self.cfg.os_trials},
                "converged": self.converged_tps is not None, "slow_lever": self.slow_note}

    # ----- decisions ----------------------------------------------------------------------------------------------

    def _new(self, **fields: Any) -> Decision:
        d = Decision(id=self.next_id, t=self.now, **fields)
        self.next_id += 1
        self.pending.append(d)
        return d

    def _settle(self, d: Decision, outcome: Outcome, why: str, after: Measurement | None) -> Decision:
        d2 = d.model_copy(update={"outcome": outcome, "outcome_reason": why, "decided_t": self.now,
                                  "measured_after": after.as_dict() if after is not None else None})
        self.pending.append(d2)
        return d2

    def _set_knobs(self, new: Knobs, reason: str, limit: int | None = None) -> list[Action]:
        """Apply knobs; the admission limit follows the concurrency knob's ratio, or is set to `limit` (back to
        a baseline's limit on a rollback)."""
        old, self.knobs = self.knobs, dict(new)
        self.bottomed_out = False
        self.pinned_since = None
        actions: list[Action] = [SetKnobs(dict(new), reason)]
        why = f"follows {_diff(old, new)}"
        if limit is None:
            ratio = concurrency_ratio(old, new, self.cfg.concurrency_knob, self.cfg.knob_defaults)
            if ratio is None:
                return actions
            limit = max(self.cfg.min_limit, min(self.cfg.max_limit, round(self.adm.limit * ratio)))
        else:
            why += " (back to the baseline's limit)"
        return actions + self._to_limit(limit, why)

    def _to_limit(self, limit: int, why: str) -> list[Action]:
        actions: list[Action] = []
        if limit != self.adm.limit:
            self._new(lever="admission", action="increase" if limit > self.adm.limit else "decrease",
                      before={"limit": self.adm.limit}, after={"limit": limit}, outcome="applied", reason=why)
            actions.append(SetLimit(limit))
        self.adm.rescale(limit, self.now)
        return actions

    # ----- fast lever ---------------------------------------------------------------------------------------------

    def _fast(self, tick: Tick) -> list[Action]:
        if self.trial is not None:
            return []  # a step is being measured at the limit it started with (scaled with the slots)
        since = max(self.adm.last_change_t, self.serving_since + self.cfg.settle_s)
        p: LimitProposal | None = propose_limit(self.ticks, self.adm, self.cfg, self.now, admitted_after=since,
                                                capacity=self._capacity())
        if p is None or (p.action == "increase" and self.pinned_since is not None):
            return []
        before = self.adm.limit
        accept(self.adm, p, self.now)
        self._new(lever="admission", action=p.action, before={"limit": before}, after={"limit": p.limit},
                  reason=p.reason, outcome="applied", measured_before=p.measured.as_dict())
        return [SetLimit(p.limit)]

    # ----- slow lever ---------------------------------------------------------------------------------------------

    def _capacity(self) -> int | None:
        """Requests the engine serves at once with the current knobs (slots, max batch), when known."""
        knob = self.cfg.concurrency_knob
        v = value(self.knobs, knob, self.cfg.knob_defaults) if knob else None
        return v if isinstance(v, int) else None

    def _recovered(self, tick: Tick) -> None:
        """After a rollback or fallback: the worker serves again, a new regime (and a cooldown) starts."""
        if self.phase == Phase.RECOVER and tick.worker_ready:
            self.phase = Phase.BASELINE
            self.regime_t = self.now
            self.cooldown_until = max(self.cooldown_until, self.now + self.cfg.cooldown_s)

    def _slow(self, tick: Tick) -> list[Action]:
        cfg, now = self.cfg, self.now
        if self.phase == Phase.RECOVER:
            self.slow_note = "waiting for the worker after a rollback or fallback"
            return []
        if self.phase == Phase.TRIAL:
            return self._judge(tick)
        if now < self.cooldown_until:
            self.slow_note = f"cooldown, {self.cooldown_until - now:.0f} s left"
            return []
        options = [c for c in candidates(self.knobs, cfg) if self.tabu.get(step_key(self.knobs, c), -1e18) <= now]
        os_pick = None if options else next_os_trial(cfg.os_trials, self.tabu, self.os_kept, now)
        if not options and os_pick is None:
            self.pinned_since = None
            self._converged(tick)
            return []
        self.converged_tps = None
        m = self._baseline()
        if m is None:
            return []
        self.pinned_since = None
        if os_pick is not None:
            return self._start_os(os_pick, m)
        target = options[0]
        d = self._new(lever="knobs", action="step", before=dict(self.knobs), after=dict(target), outcome="trial",
                      reason=f"try {_diff(self.knobs, target)} from {m.tokens_per_s:.1f} tok/s at limit "
                             f"{self.adm.limit} (requests waiting {m.saturated_ratio:.0%} of the time)",
                      measured_before=m.as_dict())
        self.trial = Trial(decision=d, from_knobs=dict(self.knobs), to_knobs=dict(target), before=m, applied_t=now,
                           limit=self.adm.limit)
        self.phase = Phase.TRIAL
        self.slow_note = f"trial of decision {d.id}"
        return self._set_knobs(target, f"controller: try {_diff(self.knobs, target)} (decision {d.id})")

    def _start_os(self, t: OsTrial, m: Measurement) -> list[Action]:
        change = ", ".join(f"{k} {t.before.get(k)} -> {v}" for k, v in t.after.items())
        d = self._new(lever="os", action="step", before=dict(t.before), after=dict(t.after), outcome="trial",
                      reason=f"try {change} from {m.tokens_per_s:.1f} tok/s at limit {self.adm.limit}"
                             f"{' (required: kept when neutral)' if t.required else ''}", measured_before=m.as_dict())
        self.trial = Trial(decision=d, from_knobs=dict(self.knobs), to_knobs=dict(self.knobs), before=m,
                           applied_t=self.now, limit=self.adm.limit, os=t)
        self.phase = Phase.TRIAL
        self.slow_note = f"OS trial {t.name} (decision {d.id})"
        return [OsStep(t, "apply", f"controller: try {change} (decision {d.id})")]

    def _baseline(self) -> Measurement | None:
        """The measurement a step is judged against: the knobs as they are, at the admission limit as it is.

        A baseline taken just before a step that was rolled back is reused while it is recent and nothing moved
        since (same knobs, same limit). Otherwise the last measure_s seconds count if the worker served steadily
        at one limit; if the fast lever moved the limit in that span, it is pinned (no increases; decreases stay
        allowed for safety) until a window at one limit exists. A window without enough traffic or demand unpins
        it for measure_s, so the fast lever can adapt meanwhile."""
        cfg, now = self.cfg, self.now
        last = self.last_baseline
        if last is not None and last[0] == self.knobs and last[1] == self.adm.limit \
                and now - last[2].end <= cfg.baseline_reuse_s and self.adm.last_fast_t <= last[2].start:
            self.slow_note = "reusing the baseline measured before the last step"
            return last[2]
        if now < self.pin_retry_at:
            self.slow_note = f"letting the admission limit adapt, {self.pin_retry_at - now:.0f} s left"
            return None
        if self.pinned_since is None:
            self.pinned_since = now
        floor = max(self.regime_t + cfg.settle_s, self.adm.last_change_t, self.serving_since)
        if now - cfg.measure_s < floor:
            self.slow_note = "measuring the baseline (admission limit pinned)"
            return None
        # latency of requests admitted at this limit only (one admitted before the last change waited under the
        # old limit); throughput counts every finish in the window
        m = measure(self.ticks, now - cfg.measure_s, now, admitted_after=floor, capacity=self._capacity())
        if m.ok < cfg.min_requests and m.ready_ratio == 1 and m.saturated_ratio >= cfg.min_saturation:
            # A slow engine under full demand (long replies, batch 1): too few requests finish in measure_s. The
            # window grows, as a trial's after-window does, up to max_measure_s at the same limit.
            span = min(cfg.max_measure_s, now - floor)
            longer = measure(self.ticks, now - span, now, admitted_after=floor, capacity=self._capacity())
            if longer.ok >= cfg.min_requests and longer.ready_ratio == 1:
                m = longer
            elif span < cfg.max_measure_s:
                self.slow_note = (f"measuring the baseline: {longer.ok} requests in {span:.0f} s, "
                                  f"{cfg.min_requests} needed (window grows up to {cfg.max_measure_s:g} s)")
                return None
        why = None
        if m.ready_ratio < 1:
            why = "the worker was not ready throughout"
        elif m.ok < cfg.min_requests:
            why = f"{m.ok} requests in {cfg.measure_s:g} s, {cfg.min_requests} needed"
        elif m.saturated_ratio < cfg.min_saturation:
            why = (f"requests waited {m.saturated_ratio:.0%} of the time, {cfg.min_saturation:.0%} needed (an idle "
                   "engine's throughput is the load)")
        elif (over := breach(m, cfg)) is not None:
            # a step is judged by "SLO held" afterwards: from a baseline that does not hold it either, the verdict
            # would say nothing about the step; the fast lever brings the SLO back first
            why = f"the SLO is not held ({over}): the admission limit adapts first"
        if why is not None:
            self.slow_note = f"baseline: {why}"
            self.pinned_since = None
            self.pin_retry_at = now + cfg.measure_s
            return None
        self.last_baseline = (dict(self.knobs), self.adm.limit, m)
        return m

    def _converged(self, tick: Tick) -> None:
        """Every step from here was tried recently. A large throughput drift means the load changed: search again."""
        cfg, now = self.cfg, self.now
        self.slow_note = "converged: every step from here was tried recently"
        start = now - cfg.measure_s
        if start < self.regime_t + cfg.settle_s:
            if self.converged_tps is None:
                self.converged_tps = self.last_baseline[2].tokens_per_s if self.last_baseline else 0.0
            return
        m = measure(self.ticks, start, now, capacity=self._capacity())
        if m.ok < cfg.min_requests or m.saturated_ratio < cfg.min_saturation:
            if self.converged_tps is None:
                self.converged_tps = 0.0
            return
        if not self.converged_tps:
            self.converged_tps = m.tokens_per_s
        elif abs(m.tokens_per_s / self.converged_tps - 1) * 100 > cfg.reexplore_drift_pct:
            self.tabu.clear()
            self.converged_tps = None
            self.slow_note = f"throughput drifted to {m.tokens_per_s:.1f} tok/s: searching again"

    def _judge(self, tick: Tick) -> list[Action]:
        cfg, now, tr = self.cfg, self.now, self.trial
        assert tr is not None
        if tr.ready_t is None:
            if tick.worker_ready:
                tr.ready_t = now
            elif now - tr.applied_t > cfg.ready_timeout_s:
                return self._rollback(f"worker not ready {cfg.ready_timeout_s:g} s after the step")
            return []
        start = tr.ready_t + cfg.settle_s
        if now < start + cfg.measure_s:
            return []
        m = measure(self.ticks, start, now, capacity=self._capacity())
        if m.ok < cfg.min_requests and now < start + cfg.max_measure_s:
            return []  # too little traffic yet: let the window grow
        if m.ok < cfg.min_requests:
            return self._rollback(f"inconclusive: {m.ok} requests finished in {m.duration_s:.0f} s", m)
        if m.ready_ratio < 1:
            return self._rollback("the worker was not ready throughout the measurement", m)
        over = breach(m, cfg, 1 + cfg.slo_tolerance_pct / 100)
        if over is not None:
            return self._rollback(f"SLO not held: {over}", m)
        before = tr.before.tokens_per_s
        gain = (m.tokens_per_s / before - 1) * 100 if before > 0 else math.inf
        verdict = f"{before:.1f} -> {m.tokens_per_s:.1f} tok/s ({gain:+.1f}%)"
        neutral = abs(gain) < cfg.dead_band_pct
        if gain < cfg.dead_band_pct and not (neutral and tr.os is not None and tr.os.required):
            why = "within the dead band" if neutral else "did not pay"
            return self._rollback(f"{why}: {verdict}, needs +{cfg.dead_band_pct:g}%", m)
        paid = "neutral, kept as the policy requires it" if gain < cfg.dead_band_pct else "paid"
        self._settle(tr.decision, "kept", f"{paid}: {verdict}, SLO held", m)
        # Going straight back is known to be worse: no need to measure it again soon.
        self.tabu[step_key(tr.to_knobs, tr.from_knobs)] = now + cfg.tabu_s
        actions: list[Action] = []
        if tr.os is not None:
            self.os_kept.add(tr.os.name)
            actions.append(OsStep(tr.os, "keep", f"controller: keep decision {tr.decision.id}"))
        self.trial = None
        self.phase = Phase.BASELINE
        self.regime_t = tr.ready_t
        self.cooldown_until = now + cfg.cooldown_s
        self.slow_note = f"kept decision {tr.decision.id} ({verdict})"
        return actions

    def _rollback(self, why: str, after: Measurement | None = None, outcome: Outcome = "rolled_back") -> list[Action]:
        tr = self.trial
        assert tr is not None
        self._settle(tr.decision, outcome, why, after)
        self.tabu[tr.key] = self.now + self.cfg.tabu_s
        self.trial = None
        self.phase = Phase.RECOVER
        self.recover_since = self.now
        self.slow_note = f"rolled back decision {tr.decision.id} ({why})"
        if tr.os is not None:  # back to the baseline's limit too, as a knob rollback is
            return [OsStep(tr.os, "undo", f"controller: roll back decision {tr.decision.id} ({why})"),
                    *self._to_limit(tr.limit, f"undo OS trial {tr.os.name} (back to the baseline's limit)")]
        return self._set_knobs(tr.from_knobs, f"controller: roll back decision {tr.decision.id} ({why})",
                               limit=tr.limit)

    # ----- out of memory ------------------------------------------------------------------------------------------

    def _memory(self, tick: Tick) -> list[Action]:
        floor = self.cfg.memory_headroom_pct
        low = []
        if tick.mem_headroom_pct is not None and tick.mem_headroom_pct < floor:
            low.append(f"host memory {tick.mem_headroom_pct:.1f}% free")
        if tick.gpu_free_pct is not None and tick.gpu_free_pct < floor:
            low.append(f"GPU memory {tick.gpu_free_pct:.1f}% free")
        if not low or self.now < self.fallback_hold_until:
            return []
        return self._fallback(f"near out of memory: {', '.join(low)} < {floor:g}% floor")

    def _fallback(self, why: str, worker_knobs: Knobs | None = None) -> list[Action]:
        cfg, now = self.cfg, self.now
        self.fallback_hold_until = now + cfg.fallback_hold_s
        self.cooldown_until = max(self.cooldown_until, now + cfg.cooldown_s)
        recent = measure(self.ticks, now - cfg.fast_window_s, now).as_dict()
        if worker_knobs is not None and worker_knobs != self.knobs:
            # The worker already stepped down by itself (torch: smaller batch); record it and follow.
            undo = undo_os(self.trial, why)
            if self.trial is not None:
                self._settle(self.trial.decision, "fallback", why, None)
                self.tabu[self.trial.key] = now + cfg.tabu_s
                self.trial = None
            self._new(lever="knobs", action="fallback", before=dict(self.knobs), after=dict(worker_knobs),
                      outcome="fallback", reason=f"{why}; the worker changed {_diff(self.knobs, worker_knobs)}",
                      measured_before=recent)
            self.tabu[step_key(worker_knobs, self.knobs)] = now + cfg.tabu_s
            self.phase = Phase.BASELINE
            self.regime_t = now
            return undo + [a for a in self._set_knobs(worker_knobs, why) if isinstance(a, SetLimit)]
        if self.trial is not None:
            tr = self.trial
            undo = undo_os(self.trial, why)
            self._settle(tr.decision, "fallback", why, None)
            self.tabu[tr.key] = now + cfg.tabu_s
            self.trial = None
            self.phase = Phase.RECOVER
            self.recover_since = now
            return undo or self._set_knobs(tr.from_knobs, f"controller: undo decision {tr.decision.id} ({why})",
                                   limit=tr.limit)
        down = step_down(self.knobs, cfg.fallback, cfg.knob_defaults)
        if down is None:
            if not self.bottomed_out:
                self._new(lever="knobs", action="fallback", before=dict(self.knobs), after=dict(self.knobs),
                          outcome="aborted", reason=f"{why}; the fallback ladder has no rung left",
                          measured_before=recent)
            self.bottomed_out = True
            return []
        new, what = down
        self._new(lever="knobs", action="fallback", before=dict(self.knobs), after=dict(new), outcome="fallback",
                  reason=f"{why}: {what}", measured_before=recent)
        self.tabu[step_key(new, self.knobs)] = now + cfg.tabu_s
        self.phase = Phase.RECOVER
        self.recover_since = now
        return self._set_knobs(new, f"controller: fallback {what} ({why})")

    def os_lost(self, t: OsTrial, why: str) -> None:
        """Keeping OS trial `t` failed (another apply, revert or restart ended it): the host holds `before` again."""
        self.os_kept.discard(t.name)
        self.tabu[t.key] = self.now + self.cfg.tabu_s
        self._new(lever="os", action="rollback", before=dict(t.after), after=dict(t.before), outcome="aborted",
                  reason=f"could not keep OS trial {t.name}: {why}")
