"""The fast lever: the gateway's admission limit, moved by AIMD every tick.

- Multiplicative decrease when the p95 service TTFT (or ITL) of requests admitted since the last change breaches
  the SLO: too many requests share the engine, each waits for a slot or a batch turn. When the limit is above what
  the engine serves at once (its slots, its max batch), the excess only waits inside the engine, unmeasured and
  unbounded: the first cut goes straight down to that capacity. (Judged on requests admitted after the last
  change, one 0.7x step takes as long as those requests wait; from 16 admitted to a 1-request engine the ladder of
  small cuts took minutes.)
- Additive increase (+1) when p95 is well under the SLO (below the dead band) and requests wait in the gateway's
  queue: the engine has room and there is demand for it.
- Hold otherwise. After a breach at limit L, L is not tried again for `probe_hold_s`: the law spends its time just
  under the knee instead of sawing across it every few seconds.

Pure: inputs are the tick history, the lever's state and the clock; the output is a proposal. The controller
applies it and logs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from agent.control.config import ControllerConfig
from agent.control.observe import Measurement, Tick, measure


@dataclass
class AdmissionState:
    limit: int
    last_change_t: float = -math.inf
    last_increase_t: float = -math.inf
    breach_limit: int | None = None     # the limit at which the SLO last broke
    breach_t: float = -math.inf
    last_fast_t: float = -math.inf      # the last change this lever made (not a rescale by the slow lever)

    def rescale(self, limit: int, t: float) -> None:
        """A new regime (engine knobs changed): take the new limit and forget the old knee."""
        self.limit = limit
        self.last_change_t = t
        self.breach_limit = None
        self.breach_t = -math.inf


@dataclass(frozen=True)
class LimitProposal:
    limit: int
    action: str             # increase | decrease
    reason: str
    measured: Measurement


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def breach(m: Measurement, cfg: ControllerConfig, slack: float = 1.0) -> str | None:
    """Why the measurement is over the SLO scaled by `slack`, or None."""
    if m.service_ttft_p95_s is not None and m.service_ttft_p95_s > cfg.ttft_slo_s * slack:
        return f"p95 service TTFT {_ms(m.service_ttft_p95_s)} > {_ms(cfg.ttft_slo_s * slack)}"
    itl = cfg.itl_slo_s
    if itl is not None and m.itl_p95_s is not None and m.itl_p95_s > itl * slack:
        return f"p95 ITL {_ms(m.itl_p95_s)} > {_ms(itl * slack)}"
    return None


def propose_limit(ticks: Sequence[Tick], st: AdmissionState, cfg: ControllerConfig, now: float,
                  admitted_after: float | None = None, capacity: int | None = None) -> LimitProposal | None:
    """The next admission limit, or None to hold. Judged on requests admitted after the last change (or after
    `admitted_after`, later: e.g. once a restarted worker has settled). `capacity`: requests the engine serves at
    once with its current knobs, when known."""
    if not ticks or not ticks[-1].worker_ready:
        return None  # a restarting worker says nothing about the limit
    tick = ticks[-1]
    since = st.last_change_t if admitted_after is None else max(st.last_change_t, admitted_after)
    m = measure(ticks, now - cfg.fast_window_s, now, admitted_after=since)
    if m.ok < cfg.min_samples:
        return None
    since_change = now - st.last_change_t
    over = breach(m, cfg)
    if over is not None:
        if since_change < cfg.decrease_hold_s or st.limit <= cfg.min_limit:
            return None
        # ceil: from just past the knee (slots + 1) the cut lands on the knee, not below it
        new = max(cfg.min_limit, min(st.limit - 1, math.ceil(st.limit * cfg.decrease_factor)))
        if capacity is not None and st.limit > capacity:
            new = max(cfg.min_limit, min(new, capacity))
            return LimitProposal(new, "decrease", f"{over} with {st.limit} admitted to an engine that serves "
                                 f"{capacity} at once", m)
        return LimitProposal(new, "decrease", f"{over} with {st.limit} admitted", m)
    if breach(m, cfg, 1 - cfg.slo_dead_band_pct / 100) is not None:
        return None  # inside the dead band: under the SLO, but not by enough to add load
    waiting = tick.queued > 0 or m.saturated_ratio > 0
    if not waiting or st.limit >= cfg.max_limit or now - st.last_increase_t < cfg.increase_interval_s:
        return None
    if since_change < cfg.increase_interval_s:
        return None
    if st.breach_limit is not None and st.limit + 1 >= st.breach_limit and now - st.breach_t < cfg.probe_hold_s:
        return None  # the knee was here a moment ago
    return LimitProposal(st.limit + 1, "increase", f"p95 service TTFT {_ms(m.service_ttft_p95_s)} under "
                         f"{_ms(cfg.ttft_slo_s * (1 - cfg.slo_dead_band_pct / 100))} with {tick.queued} waiting", m)


def accept(st: AdmissionState, p: LimitProposal, now: float) -> None:
    """Record that the proposal was applied."""
    if p.action == "decrease":
        st.breach_limit = st.limit
        st.breach_t = now
    else:
        st.last_increase_t = now
    st.limit = p.limit
    st.last_change_t = now
    st.last_fast_t = now
