"""What the control law hands out and takes in besides ticks: its actions (the admission limit, engine knobs, an OS
trial step) and the worker's own events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent.control.ladder import Knobs
from agent.control.os_trials import OsStep


@dataclass(frozen=True)
class SetLimit:
    limit: int


@dataclass(frozen=True)
class SetKnobs:
    knobs: Knobs
    reason: str


Action = SetLimit | SetKnobs | OsStep


@dataclass(frozen=True)
class WorkerEvent:
    """Something the worker did on its own: ran out of memory, crashed, or gave up (crash loop, bad config).
    `knobs` is set when the worker changed its own knobs (the torch worker shrinks its batch on OOM)."""

    kind: Literal["oom", "crash", "failed"]
    reason: str
    knobs: Knobs | None = None
