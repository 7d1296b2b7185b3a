"""What every engine adapter (engines.py, torch_engine.py) produces and shares: the Launch of one worker
process, the Engine protocol, and two helpers. The supervisor and the controller start and judge workers from a
Launch without knowing which engine made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent.policy.model import WorkerSpec
from agent.worker.binding import Binding
from agent.worker.placement import Placement


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one worker process."""

    engine: str
    argv: list[str]
    env: dict[str, str]
    base_url: str
    health_url: str
    metrics_url: str | None
    model: Path | None = None
    placement: Placement | None = None
    binding: Binding = field(default_factory=lambda: Binding(mechanism="none", cpus=[], membind_node=None,
                                                             prefix=[]))


class Engine(Protocol):
    name: str

    def launch(self, spec: WorkerSpec, model: Path | None, placement: Placement | None) -> Launch: ...

    def restart_needed(self, old: WorkerSpec, new: WorkerSpec) -> list[str]: ...


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def changed_fields(old: WorkerSpec, new: WorkerSpec) -> list[str]:
    a, b = old.model_dump(), new.model_dump()
    return sorted(k for k in a if a[k] != b[k])
