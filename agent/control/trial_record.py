"""A trial in progress in the control law (agent/control/core.py): a knob step or an OS trial being measured."""

from __future__ import annotations

from dataclasses import dataclass

from agent.control.actions import Action
from agent.control.decisions import Decision
from agent.control.ladder import Knobs, key
from agent.control.observe import Measurement
from agent.control.os_trials import OsStep, OsTrial


@dataclass
class Trial:
    decision: Decision
    from_knobs: Knobs
    to_knobs: Knobs
    before: Measurement
    applied_t: float
    limit: int = 1
    ready_t: float | None = None
    os: OsTrial | None = None   # an OS trial: knobs stay as they are

    @property
    def key(self) -> str:
        return self.os.key if self.os is not None else step_key(self.from_knobs, self.to_knobs)


def step_key(a: Knobs, b: Knobs) -> str:
    return f"{key(a)} > {key(b)}"


def undo_os(tr: Trial | None, why: str) -> list[Action]:
    return [OsStep(tr.os, "undo", f"controller: undo decision {tr.decision.id} ({why})")] if tr and tr.os else []
