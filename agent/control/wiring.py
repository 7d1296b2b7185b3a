"""Assembling a controller from the parts a daemon already runs: the gateway (its stats and admission gate), the
telemetry store (memory headroom), the worker supervisor (llama-server: knobs by restart) or the torch worker's
control client (knobs live), the policy's SLO and the state directory (decision log)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.control.actuators import GateActuator, KnobActuator, LiveActuator, RestartActuator
from agent.control.config import LLAMACPP_DEFAULTS, LLAMACPP_LADDER, config_for, threads_batch_axis
from agent.control.controller import Controller, OsActuator, decisions_path
from agent.control.decisions import DecisionLog
from agent.control.drain import Drain
from agent.control.feed import GatewayFeed
from agent.policy.model import SloSpec, WorkerSpec
from agent.worker.placement import Placement

if TYPE_CHECKING:
    from agent.gateway.app import Gateway
    from agent.telemetry.collector import Telemetry
    from agent.worker.supervisor import Supervisor
    from agent.worker.torch_control import TorchWorkerControl


def worker_overrides(spec: WorkerSpec | None, placement: Placement | None) -> dict[str, Any]:
    """Ladder settings a llama.cpp worker's spec asks for: a threads_batch axis when worker.threads_batch_max is
    set, from the decode threads up to the max and the worker's CPUs (its placement's, else this process's)."""
    if spec is None or spec.engine != "llamacpp" or spec.threads_batch_max is None:
        return {}
    threads = spec.threads or (placement.threads if placement is not None else None)
    if threads is None:
        return {}
    cpus = len(placement.cpus) if placement is not None and placement.cpus else len(os.sched_getaffinity(0))
    axis = threads_batch_axis(threads, cpus, spec.threads_batch_max)
    if axis is None:
        return {}
    return {"ladder": [*(a.model_copy() for a in LLAMACPP_LADDER), axis],
            "knob_defaults": {**LLAMACPP_DEFAULTS, "threads_batch": threads}}


def build_controller(slo: SloSpec | None, gateway: Gateway, *, engine: str = "llamacpp",
                     telemetry: Telemetry | None = None,
                     supervisor: Supervisor | Callable[[], Supervisor | None] | None = None,
                     torch_control: TorchWorkerControl | None = None, state_dir: Path | None = None,
                     gpu_index: int | None = None, watch_gpu: bool = True, drain: Drain | None = None,
                     worker: WorkerSpec | None = None, placement: Placement | None = None,
                     os_actuator: OsActuator | None = None, **overrides: Any) -> Controller:
    """A controller for the worker behind `gateway` (agent.gateway.app.Gateway).

    supervisor: the Supervisor, or a zero-argument callable returning the current one (a reload may replace it);
    torch_control: a TorchWorkerControl for engine "torch" (then the supervisor is not used for knobs);
    neither: the fast lever only. drain: the Drain whose DrainingEndpoint the gateway uses, so restarts wait for
    the worker's replies in progress. worker/placement: the running llama.cpp worker's spec and placement (a
    threads_batch axis, agent.control.wiring.worker_overrides). os_actuator: runs the OS trials given in
    overrides (`os_trials`, from agent.control.os_trials.os_trials_for) through the tuning engine. Raises
    InputError when the SLO has no ttft_p95_ms."""
    cfg = config_for(engine, slo, **{**worker_overrides(worker, placement), **overrides})
    knobs: KnobActuator | None = None
    if engine == "torch" and torch_control is not None:
        knobs = LiveActuator(torch_control)
    elif supervisor is not None:
        knobs = RestartActuator(supervisor, drain=drain)
    log = DecisionLog(decisions_path(state_dir) if state_dir is not None else None, keep=cfg.max_decisions)
    feed = GatewayFeed(gateway.stats, telemetry=telemetry, gpu_index=gpu_index, watch_gpu=watch_gpu)
    return Controller(cfg, feed, GateActuator(gateway.gate), knobs, log, os_actuator=os_actuator)
