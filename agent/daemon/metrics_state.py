"""The facts behind the daemon's own Prometheus series (agent/telemetry/daemon_state.py), taken from where they
live: the policy applied (its file's digest, its SLO, the hugepage pools it holds), the running worker's spec (the
knobs in force: the controller may have moved them) and the controller (decisions taken, knobs held). Plain
values only: telemetry never sees a daemon object. The controller's modules are imported only where a controller
runs (the tuning service imports this module; a daemon without a worker carries no controller code).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import InputError
from agent.fsio import read_capped
from agent.policy.loader import LoadedPolicy
from agent.policy.model import WorkerSpec
from agent.policy.yamlnodes import MAX_FILE_BYTES
from agent.telemetry.daemon_state import PolicyState, WorkerInfo
from agent.tunable.change import Change

if TYPE_CHECKING:
    from agent.control.controller import Controller

HUGEPAGE_SIZES = {"hugepages-2048kB": ("2M", 2 << 20), "hugepages-1048576kB": ("1G", 1 << 30)}


def policy_digest(path: Path) -> str:
    """First 12 hex digits of the sha256 of the policy file ("" when it cannot be read any more)."""
    try:
        return hashlib.sha256(read_capped(path, MAX_FILE_BYTES)).hexdigest()[:12]
    except (OSError, InputError):
        return ""


def hugepages_held(changes: Iterable[Change]) -> dict[str, int]:
    """Bytes of each page size the applied hugepages entries hold (the pool sizes apply wrote or found in place)."""
    held: dict[str, int] = {}
    for c in changes:
        size = HUGEPAGE_SIZES.get(c.target.split("/", 1)[0]) if c.tuner == "hugepages" else None
        if size is None or c.action not in ("change", "ok") or c.value is None or not c.value.isdigit():
            continue
        held[size[0]] = held.get(size[0], 0) + int(c.value) * size[1]
    return held


def policy_state(loaded: LoadedPolicy, changes: Iterable[Change]) -> PolicyState:
    slo = loaded.policy.slo
    targets = {} if slo is None else {name: ms / 1000.0 for name, ms in
                                      (("ttft_p95", slo.ttft_p95_ms), ("itl_p95", slo.itl_p95_ms)) if ms is not None}
    return PolicyState(name=loaded.policy.name, digest=policy_digest(loaded.source), slo_seconds=targets,
                       hugepages_bytes=hugepages_held(changes))


def worker_info(spec: WorkerSpec, restarts: int, slots_seen: int | None, crashes: int = 0) -> WorkerInfo:
    """The running spec's engine, model (the file's name, not its directory) and knobs; the slot count is the
    spec's, else what the worker's /slots answered."""
    return WorkerInfo(engine=spec.engine, model=Path(spec.model).name or spec.model,
                      slots=spec.parallel if spec.parallel is not None else slots_seen, ctx_size=spec.ctx,
                      batch_size=spec.batch, ubatch_size=spec.ubatch, cache_type_k=spec.cache_type_k,
                      cache_type_v=spec.cache_type_v, restarts=restarts, crashes=crashes)


def controller_knobs(ctl: Controller) -> dict[str, float]:
    """The numeric knobs the controller holds in force (unset ones at the engine's default), known names only:
    the engines' knob names are the only label values hosttune_controller_knob{knob} carries."""
    from agent.control.actuators import LLAMACPP_KNOBS, TORCH_KNOBS
    from agent.control.ladder import value

    knobs, defaults = dict(ctl.core.knobs), ctl.cfg.knob_defaults
    held = {name: value(knobs, name, defaults) for name in knobs if name in LLAMACPP_KNOBS + TORCH_KNOBS}
    return {k: float(v) for k, v in held.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def decisions_taken(ctl: Controller | None, before: Counter[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Decisions since the daemon started: earlier controllers' (a reload replaces it) plus the running one's."""
    return dict(before + ctl.log.taken()) if ctl is not None else dict(before)
