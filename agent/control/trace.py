"""Telemetry traces for the control law: recorded from a real run (gateway in front of llama-server under load) or
written by hand, stored as JSON, replayed deterministically.

A trace holds segments, one per engine-knob setting, each a list of ticks (as the controller's feed saw them, one
per second, times relative to the segment's start) and optional worker events. Replaying:
- open loop (`replay_ticks`): the ticks as recorded, whatever the controller does; the admission limit the law
  sets is carried in the ticks it sees. For the fast lever's reaction to a recorded overload.
- closed over the knobs (`TraceWorld`): when the law changes the knobs, the world switches to the segment
  recorded with those knobs (after a restart gap with the worker not ready), so a step is judged on what that
  setting really did. For the slow lever: keep, roll back, fall back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.control.core import ControlCore, SetKnobs, SetLimit, WorkerEvent
from agent.control.decisions import Decision
from agent.control.ladder import Knobs
from agent.control.observe import Tick, shifted, tick_from_dict, tick_to_dict
from agent.errors import InputError
from agent.fsio import read_text_capped

FORMAT = "hosttune-control-trace/1"
TRACE_MAX_BYTES = 64 << 20


@dataclass
class Segment:
    knobs: Knobs
    ticks: list[Tick]
    events: list[tuple[float, WorkerEvent]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        if len(self.ticks) < 2:
            return 1.0
        step = self.ticks[1].t - self.ticks[0].t
        return self.ticks[-1].t - self.ticks[0].t + step

    def matches(self, knobs: Knobs) -> bool:
        return all(knobs.get(k) == v for k, v in self.knobs.items())


@dataclass
class Trace:
    segments: list[Segment]
    meta: dict[str, Any] = field(default_factory=dict)

    def segment(self, knobs: Knobs) -> Segment:
        for s in self.segments:
            if s.matches(knobs):
                return s
        raise KeyError(f"no recorded segment for knobs {knobs}")


def load_trace(path: Path) -> Trace:
    try:
        data = json.loads(read_text_capped(path, TRACE_MAX_BYTES))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read trace: {e}", path=path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"not a controller trace (format {FORMAT!r} expected)", path=path, field="format")
    segments = []
    for i, s in enumerate(data.get("segments", [])):
        try:
            events = [(float(e["t"]), WorkerEvent(e["kind"], e["reason"], e.get("knobs")))
                      for e in s.get("events", [])]
            segments.append(Segment(knobs=dict(s.get("knobs", {})), ticks=[tick_from_dict(t) for t in s["ticks"]],
                                    events=events, meta={k: v for k, v in s.items()
                                                         if k not in ("knobs", "ticks", "events")}))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"bad segment: {e}", path=path, field=f"segments[{i}]") from None
    if not segments:
        raise InputError("no segments", path=path, field="segments")
    return Trace(segments, {k: v for k, v in data.items() if k not in ("segments", "format")})


def trace_to_dict(trace: Trace) -> dict[str, Any]:
    return {"format": FORMAT, **trace.meta, "segments": [
        {**s.meta, "knobs": s.knobs, "ticks": [tick_to_dict(t) for t in s.ticks],
         **({"events": [{"t": t, "kind": e.kind, "reason": e.reason, **({"knobs": e.knobs} if e.knobs else {})}
                        for t, e in s.events]} if s.events else {})} for s in trace.segments]}


def save_trace(trace: Trace, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(trace_to_dict(trace), separators=(",", ":")) + "\n")


def replay_ticks(core: ControlCore, ticks: list[Tick]) -> list[Decision]:
    """Open loop: feed the recorded ticks, with the limit the law has set in each. Returns every decision version
    produced, in order."""
    out: list[Decision] = []
    for t in ticks:
        core.step(replace(t, limit=core.adm.limit))
        out += core.pending
        core.pending = []
    return out


class TraceWorld:
    """A worker whose behaviour per knob setting comes from the recorded segments."""

    def __init__(self, trace: Trace, knobs: Knobs, restart_gap_s: float = 2.0, step_s: float = 1.0,
                 t0: float = 0.0) -> None:
        self.trace = trace
        self.restart_gap_s = restart_gap_s
        self.step_s = step_s
        self.now = t0
        self.limit = 1
        self.applied: list[Knobs] = []
        self._start(knobs, gap=0.0)

    def _start(self, knobs: Knobs, gap: float) -> None:
        self.segment = self.trace.segment(knobs)
        self.gap_until = self.now + gap
        self.offset = self.gap_until - self.segment.ticks[0].t   # segment time + offset = world time
        self.cursor = 0
        self.event_cursor = 0

    def apply(self, knobs: Knobs) -> None:
        self.applied.append(dict(knobs))
        self._start(knobs, gap=self.restart_gap_s)

    def ticks(self, seconds: float) -> Iterator[tuple[Tick, list[WorkerEvent]]]:
        end = self.now + seconds
        while self.now < end:
            self.now += self.step_s
            if self.now <= self.gap_until:
                yield Tick(t=self.now, worker_ready=False, limit=self.limit), []
                continue
            seg = self.segment
            if self.cursor >= len(seg.ticks):   # wrap: the segment plays again, later
                self.offset += seg.duration
                self.cursor = 0
                self.event_cursor = 0
            rec = seg.ticks[self.cursor]
            self.cursor += 1
            events = []
            while self.event_cursor < len(seg.events) and seg.events[self.event_cursor][0] <= rec.t:
                events.append(seg.events[self.event_cursor][1])
                self.event_cursor += 1
            yield shifted(rec, self.offset, t=self.now, limit=self.limit), events


def run_world(core: ControlCore, world: TraceWorld, seconds: float) -> list[Decision]:
    """Closed loop over the knobs: the law's knob changes switch the world's segment; returns every decision
    version produced, in order."""
    out: list[Decision] = []
    world.limit = core.adm.limit
    for tick, events in world.ticks(seconds):
        actions = []
        for ev in events:
            actions += core.on_event(ev, tick.t)
        actions += core.step(tick)
        for a in actions:
            if isinstance(a, SetKnobs):
                world.apply(a.knobs)
            elif isinstance(a, SetLimit):
                world.limit = a.limit
        out += core.pending
        core.pending = []
    return out
