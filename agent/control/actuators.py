"""Actuators: how a decision reaches the system. The control law never touches them; the Controller does.

- GateActuator: the gateway's admission limit (AdmissionGate.set_limit, safe from any thread).
- KnobActuator: engine knobs. Two kinds behind one interface, so one controller drives both engines:
  * RestartActuator: llama-server reads its knobs once at start, so a change is Supervisor.restart(new_spec);
    `ready()` is False until the restarted process answers. The supervisor's crash transitions become worker
    events, OOM crashes delivered at once (before the supervisor's back-off restarts the old knobs).
  * LiveActuator: the torch worker takes max_batch / kv_budget_tokens over POST /control at its next step;
    always ready; its own OOM handling (it shrinks the batch) shows up as a rising oom_total.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent.control.core import WorkerEvent
from agent.control.drain import Drain, busy_slots
from agent.control.ladder import Knobs
from agent.worker.exits import OOM_HINT

log = logging.getLogger(__name__)

LLAMACPP_KNOBS: tuple[str, ...] = ("parallel", "ubatch", "batch", "ctx", "cache_type_k", "cache_type_v",
                                   "gpu_layers", "threads_batch")
TORCH_KNOBS: tuple[str, ...] = ("max_batch", "kv_budget_tokens")
OOM_KILLER = re.compile(r"OOM killer", re.IGNORECASE)


class LimitActuator(Protocol):
    @property
    def limit(self) -> int: ...

    def set_limit(self, limit: int) -> None: ...


class KnobActuator(Protocol):
    live: bool

    def knobs(self) -> Knobs: ...

    def apply(self, knobs: Knobs, reason: str) -> None:
        """Start the change and return at once; ready() says when the worker serves with it."""
        ...

    def ready(self) -> bool: ...

    def poll(self) -> list[WorkerEvent]:
        """Worker events seen since the last poll (for sources without a push path)."""
        ...

    def subscribe(self, callback: Callable[[WorkerEvent], None]) -> None:
        """Deliver events as they happen (may be a no-op; poll() then carries them)."""
        ...


class GateActuator:
    def __init__(self, gate: Any) -> None:
        self.gate = gate

    @property
    def limit(self) -> int:
        return int(self.gate.limit)

    def set_limit(self, limit: int) -> None:
        self.gate.set_limit(limit)


def is_oom(reason: str | None) -> bool:
    return bool(reason) and bool(OOM_HINT.search(reason or "") or OOM_KILLER.search(reason or ""))


class RestartActuator:
    """Engine knobs of a supervised llama-server. `supervisor` is the Supervisor or a callable returning the current
    one (the daemon replaces it on reload); listeners are attached to each new one on first sight.

    With a `drain` (the one wrapping the gateway's endpoint), apply() holds new requests at the gateway, waits up to
    drain_timeout_s for the worker's busy slots to finish, then restarts: no reply is cut mid-stream. That runs in
    a background thread; apply() returns at once and ready() stays False until the new process serves."""

    live = False

    def __init__(self, supervisor: Any, knob_names: tuple[str, ...] = LLAMACPP_KNOBS, drain: Drain | None = None,
                 drain_timeout_s: float = 60.0, busy: Callable[[str | None], int | None] = busy_slots) -> None:
        self._get = supervisor if callable(supervisor) and not hasattr(supervisor, "restart") else (lambda: supervisor)
        self.knob_names = knob_names
        self.drain = drain
        self.drain_timeout_s = drain_timeout_s
        self._busy = busy
        self.last_drain_s: float | None = None
        self._lock = threading.Lock()
        self._events: list[WorkerEvent] = []
        self._callback: Callable[[WorkerEvent], None] | None = None
        self._attached: set[int] = set()
        self._crashes_seen: dict[int, int] = {}
        self._awaiting_start: tuple[int, int] | None = None   # (supervisor id, starts count at apply)

    def _sup(self) -> Any:
        sup = self._get()
        if sup is not None and id(sup) not in self._attached:
            self._attached.add(id(sup))
            self._crashes_seen[id(sup)] = sup.status().crashes
            sup.add_listener(lambda st, s=sup: self._on_status(s, st))
        return sup

    def knobs(self) -> Knobs:
        sup = self._sup()
        if sup is None:
            return {}
        spec = sup.spec
        return {k: getattr(spec, k) for k in self.knob_names}

    def apply(self, knobs: Knobs, reason: str) -> None:
        sup = self._sup()
        if sup is None:
            raise RuntimeError("no worker to restart")
        spec = sup.spec.model_copy(update={k: v for k, v in knobs.items() if k in self.knob_names})
        spec = type(spec).model_validate(spec.model_dump())  # the same checks a policy gets
        with self._lock:
            self._awaiting_start = (id(sup), sup.status().starts)
        if self.drain is None:
            sup.restart(spec, reason=reason)
            return
        self.drain.begin()
        threading.Thread(target=self._drain_then_restart, args=(sup, spec, reason), name="controller-drain",
                         daemon=True).start()

    def _drain_then_restart(self, sup: Any, spec: Any, reason: str) -> None:
        assert self.drain is not None
        t0 = time.monotonic()
        starts = sup.status().starts
        try:
            while time.monotonic() - t0 < self.drain_timeout_s:
                busy = self._busy(sup.base_url)
                if busy is None or busy == 0:
                    break
                time.sleep(0.1)
            self.last_drain_s = time.monotonic() - t0
            sup.restart(spec, reason=reason)
            # keep holding until the old process is really gone (the supervisor still says ready for a moment)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                st = sup.status()
                if st.starts > starts or str(st.state) != "ready":
                    break
                time.sleep(0.05)
        finally:
            self.drain.end()

    def ready(self) -> bool:
        sup = self._sup()
        if sup is None:
            return False
        st = sup.status()
        with self._lock:
            waiting = self._awaiting_start
            if waiting is not None:
                if waiting[0] == id(sup) and st.starts <= waiting[1]:
                    return False  # the restart we asked for has not started a new process yet
                self._awaiting_start = None
        return str(st.state) == "ready"

    def poll(self) -> list[WorkerEvent]:
        self._sup()
        with self._lock:
            events, self._events = self._events, []
        return events

    def subscribe(self, callback: Callable[[WorkerEvent], None]) -> None:
        self._callback = callback
        self._sup()

    def _on_status(self, sup: Any, st: Any) -> None:
        """Supervisor listener: a crash counts once (by the crash counter, not by the reason text, which the
        controller's own restart reasons could match)."""
        state = str(st.state)
        seen = self._crashes_seen.get(id(sup), 0)
        event: WorkerEvent | None = None
        if st.crashes > seen:
            self._crashes_seen[id(sup)] = st.crashes
            reason = st.last_exit_reason or st.reason or "worker crashed"
            event = WorkerEvent("oom" if is_oom(reason) else "crash", reason)
        elif state == "failed" and st.reason:
            event = WorkerEvent("failed", st.reason)
        if event is None:
            return
        if self._callback is not None:
            try:
                self._callback(event)
            except Exception:
                log.exception("controller failed to handle a worker event")
        else:
            with self._lock:
                self._events.append(event)


class LiveActuator:
    """Knobs of a torch worker through its control client (agent.worker.torch_control.TorchWorkerControl or
    anything with state() and update(**fields))."""

    live = True

    def __init__(self, control: Any, knob_names: tuple[str, ...] = TORCH_KNOBS) -> None:
        self.control = control
        self.knob_names = knob_names
        self._oom_total: int | None = None

    def knobs(self) -> Knobs:
        st = self.control.state()
        return {k: getattr(st, k) for k in self.knob_names}

    def apply(self, knobs: Knobs, reason: str) -> None:
        self.control.update(**{k: v for k, v in knobs.items() if k in self.knob_names})

    def ready(self) -> bool:
        return True

    def poll(self) -> list[WorkerEvent]:
        st = self.control.state()
        total = int(st.oom_total)
        if self._oom_total is None or total <= self._oom_total:
            self._oom_total = total
            return []
        self._oom_total = total
        last = st.last_ooms[-1] if st.last_ooms else None
        why = f"{total} OOM events"
        if last is not None:
            why = (f"{last.error} in {last.phase} at batch {last.rows}; "
                   f"max_batch {last.max_batch_before} -> {last.max_batch_after}")
        return [WorkerEvent("oom", why, knobs={k: getattr(st, k) for k in self.knob_names})]

    def subscribe(self, callback: Callable[[WorkerEvent], None]) -> None:
        return None
