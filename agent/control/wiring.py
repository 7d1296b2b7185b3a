"""Assembling a controller from the parts a daemon already runs: the gateway (its stats and admission gate), the
telemetry store (memory headroom), the worker supervisor (llama-server: knobs by restart) or the torch worker's
control client (knobs live), the policy's SLO and the state directory (decision log)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.control.actuators import GateActuator, KnobActuator, LiveActuator, RestartActuator
from agent.control.config import config_for
from agent.control.controller import Controller, OsActuator, decisions_path
from agent.control.decisions import DecisionLog
from agent.control.drain import Drain
from agent.control.feed import GatewayFeed
from agent.policy.model import SloSpec

if TYPE_CHECKING:
    from agent.gateway.app import Gateway
    from agent.telemetry.collector import Telemetry
    from agent.worker.supervisor import Supervisor
    from agent.worker.torch_control import TorchWorkerControl


def build_controller(slo: SloSpec | None, gateway: Gateway, *, engine: str = "llamacpp",
                     telemetry: Telemetry | None = None,
                     supervisor: Supervisor | Callable[[], Supervisor | None] | None = None,
                     torch_control: TorchWorkerControl | None = None, state_dir: Path | None = None,
                     gpu_index: int | None = None, watch_gpu: bool = True, drain: Drain | None = None,
                     os_actuator: OsActuator | None = None, **overrides: Any) -> Controller:
    """A controller for the worker behind `gateway` (agent.gateway.app.Gateway).

    supervisor: the Supervisor, or a zero-argument callable returning the current one (a reload may replace it);
    torch_control: a TorchWorkerControl for engine "torch" (then the supervisor is not used for knobs);
    neither: the fast lever only. drain: the Drain whose DrainingEndpoint the gateway uses, so restarts wait for
    the worker's replies in progress. os_actuator: runs the OS trials given in overrides (`os_trials`, from
    agent.control.os_trials.os_trials_for) through the tuning engine. Raises InputError when the SLO has no
    ttft_p95_ms."""
    cfg = config_for(engine, slo, **overrides)
    knobs: KnobActuator | None = None
    if engine == "torch" and torch_control is not None:
        knobs = LiveActuator(torch_control)
    elif supervisor is not None:
        knobs = RestartActuator(supervisor, drain=drain)
    log = DecisionLog(decisions_path(state_dir) if state_dir is not None else None, keep=cfg.max_decisions)
    feed = GatewayFeed(gateway.stats, telemetry=telemetry, gpu_index=gpu_index, watch_gpu=watch_gpu)
    return Controller(cfg, feed, GateActuator(gateway.gate), knobs, log, os_actuator=os_actuator)
