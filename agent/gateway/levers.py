"""The gateway's per-worker request levers, in one object the proxy consults: slot affinity and prompt caching
(agent/gateway/affinity.py) and load shedding (agent/gateway/shedding.py).

Why they come from the policy and not from the daemon config's gateway section: each depends on the worker the
policy runs — id_slot only means something to llama-server and must stay below its `parallel` (which the
controller moves), and shedding sheds above the policy's TTFT SLO. The gateway outlives policies (it holds
requests while a reload restarts the worker), so the
swap is one reference assignment, safe from any thread, and the slot map follows on the gateway's loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from agent.gateway.admission import AdmissionGate
from agent.gateway.affinity import Rewritten, Shaping, SlotMap, rewrite
from agent.gateway.shedding import ServiceClock, shed_retry_after
from agent.policy.model import SloSpec, WorkerSpec
from agent.worker.engines import LLAMACPP_AUTO_SLOTS

PolicySource = Callable[[], tuple[WorkerSpec | None, SloSpec | None]]


def levers_for(spec: WorkerSpec | None, slo: SloSpec | None) -> tuple[Shaping, float | None]:
    """The shaping and shed budget a policy's worker and SLO ask for. Only llama-server knows id_slot and
    cache_prompt: other engines get their bodies untouched."""
    shaping = Shaping()
    if spec is not None and spec.engine == "llamacpp":
        shaping = Shaping(slots=spec.parallel or LLAMACPP_AUTO_SLOTS, affinity=spec.slot_affinity,
                          cache_prompt=spec.cache_prompt, slots_known=True)
    budget = slo.ttft_p95_ms / 1000 if slo is not None and slo.shed and slo.ttft_p95_ms else None
    return shaping, budget


class Levers:
    def __init__(self, shaping: Shaping | None = None, shed_budget_s: float | None = None) -> None:
        self.shaping = shaping or Shaping()
        self.shed_budget_s = shed_budget_s
        self.slot_map = SlotMap(self.shaping.slots)
        self.service = ServiceClock()
        self.shed_total = 0
        self._source: PolicySource | None = None
        self._seen: tuple[WorkerSpec | None, SloSpec | None] = (None, None)

    def follow(self, source: PolicySource) -> None:
        """Take the levers from the running worker's spec and SLO, re-read whenever they change (a reload, or the
        controller moving `parallel`: the supervisor then holds a new spec object)."""
        self._source = source
        self._refresh()

    def _refresh(self) -> None:
        if self._source is None:
            return
        spec, slo = self._source()
        if spec is self._seen[0] and slo is self._seen[1]:
            return
        if spec is not self._seen[0]:
            # A new worker spec (threads, batch, parallel... whichever knob moved): the worker restarted with
            # other knobs, so the service times learned from the old one say nothing about the new one.
            self.service.clear()
        self._seen = (spec, slo)
        self.configure(*levers_for(spec, slo))

    def configure(self, shaping: Shaping, shed_budget_s: float | None) -> None:
        if shed_budget_s is not None and not shed_budget_s > 0:
            raise ValueError("shed budget must be positive")
        if shaping.slots != self.shaping.slots:
            self.service.clear()
        self.shaping = shaping
        self.shed_budget_s = shed_budget_s

    def ceiling(self) -> int | None:
        """With shedding on and an engine whose slots are known, the gateway admits at most that many at once,
        whatever the admission limit (the controller's fast lever may raise it above the slots). A request admitted
        beyond the slots would wait inside llama-server, where neither the wait prediction nor the late check can
        see it, and its admission-to-last-byte time would teach the service clock a queue wait as service."""
        if self.shed_budget_s is None or not self.shaping.slots_known:
            return None
        return max(1, self.shaping.slots)

    def shed(self, gate: AdmissionGate) -> int | None:
        """Retry-After seconds if a request arriving now should be refused, else None. Also sets the gate's
        ceiling (on the gate's loop, before the request asks for admission)."""
        self._refresh()
        gate.set_ceiling(self.ceiling())
        retry = shed_retry_after(gate.queued, gate.in_flight, gate.effective_limit, self.service.estimate(),
                                 self.shed_budget_s)
        if retry is not None:
            self.shed_total += 1
        return retry

    def late_after(self, started: float) -> float | None:
        """The monotonic time after which a request that arrived at `started` and is still waiting for admission
        has missed the TTFT SLO by its wait alone (None: shedding is off)."""
        self._refresh()
        return None if self.shed_budget_s is None else started + self.shed_budget_s

    def count_late(self) -> int:
        """Count a queued request refused for having waited out the budget; its Retry-After hint in seconds."""
        self.shed_total += 1
        return max(1, math.ceil(self.shed_budget_s or 1))

    def rewrite(self, body: bytes, session_id: str | None) -> Rewritten:
        self._refresh()
        shaping = self.shaping
        self.slot_map.resize(max(1, shaping.slots))
        out = rewrite(body, session_id, shaping, self.slot_map)
        if out.slot is not None:
            self.slot_map.begin(out.slot)
        return out

    def done(self, slot: int | None, service_s: float | None) -> None:
        """A request the gateway sent on finished: free its slot, and learn its service time if it was served."""
        if slot is not None:
            self.slot_map.end(slot)
        if service_s is not None:
            self.service.record(service_s)
