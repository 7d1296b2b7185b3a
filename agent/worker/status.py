"""The worker's observable state: the state machine's states and the status record the supervisor keeps.

The status is written to <state-dir>/worker/state.json on every transition, so `hosttune worker status` (another
process) and the API (the daemon's own process) read the same thing.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.worker.pagecache import PrewarmResult
from agent.worker.placement import Placement
from agent.worker.smaps import WorkerMemory


class WorkerState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"


class Transition(BaseModel):
    state: WorkerState
    at: float
    reason: str | None = None


class WorkerStatus(BaseModel):
    """What `hosttune worker status` shows and the API serves; written to <state-dir>/worker/state.json."""

    model_config = ConfigDict(extra="forbid")

    state: WorkerState
    since: float
    reason: str | None = Field(None, description="why the last transition happened")
    pid: int | None = None
    supervisor_pid: int | None = None
    engine: str | None = None
    model: str | None = None
    base_url: str | None = None
    health_url: str | None = None
    metrics_url: str | None = None
    argv: list[str] = Field(default_factory=list)
    placement: Placement | None = None
    binding: str | None = Field(None, description="how CPUs/memory were bound: numactl, bindexec or none")
    starts: int = 0
    restarts: int = 0
    crashes: int = 0
    recent_crashes: int = Field(0, description="crashes inside the crash-loop window")
    last_exit: str | None = None
    last_exit_reason: str | None = None
    stderr_tail: list[str] = Field(default_factory=list)
    ready_at: float | None = None
    load_seconds: float | None = Field(None, description="spawn to first healthy answer, last start")
    resident_at_start: float | None = Field(None, description="fraction of the model file in page cache at spawn")
    prewarm: PrewarmResult | None = None
    memory: WorkerMemory | None = Field(None, description="the worker's smaps_rollup: where its memory (and the "
                                        "model's weights) lives, sampled every few seconds while it runs")
    next_start_in_s: float | None = None
    transitions: list[Transition] = Field(default_factory=list)
    spec: dict[str, Any] | None = None
