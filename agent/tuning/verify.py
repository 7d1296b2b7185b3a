"""Verify: does the host still hold every tunable of the applied policy? Reads only.

Each applied change with action change/ok is read again through its tuner and compared the way the plan
compared it (exact, whitespace-normalised, or at-least/at-most), so a value someone raised above a ">=" floor is
not drift. Reboot advice is reported as pending, not as drift. An interrupted transaction is drift too: the host
is in between two states until `hosttune revert` or the next apply recovers it — except the controller's OS trial
(agent/tuning/trial.py): its open transaction is not an interruption, and the tunables it wrote are in "trial",
not drift, until the controller keeps or undoes it (so the drift job neither reports nor re-applies them).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from agent.tuners.registry import TunerSet
from agent.tuning.journal import Journal
from agent.tuning.trial import open_trial

State = Literal["held", "drift", "pending_reboot", "unknown", "trial"]


class VerifyItem(BaseModel):
    tuner: str
    target: str
    expected: str | None
    current: str | None
    state: State
    field: str | None = None


class VerifyResult(BaseModel):
    policy: str | None
    applied_at: float | None = None
    interrupted: str | None = Field(None, description="an open transaction found in the journal")
    trial: str | None = Field(None, description="the controller's OS trial in progress (its targets: state trial)")
    items: list[VerifyItem] = Field(default_factory=list)

    @property
    def drift(self) -> list[VerifyItem]:
        return [i for i in self.items if i.state in ("drift", "unknown")]

    @property
    def ok(self) -> bool:
        return not self.drift and self.interrupted is None

    def summary(self) -> str:
        if self.policy is None:
            return "no policy applied"
        held = sum(1 for i in self.items if i.state == "held")
        pending = sum(1 for i in self.items if i.state == "pending_reboot")
        text = f"{self.policy}: {held} held, {len(self.drift)} drifted, {pending} pending a reboot"
        if self.interrupted:
            text += f"; {self.interrupted}"
        return text


def expected_text(value: str | None, compare: str) -> str | None:
    if value is None:
        return None
    return {"ge": f">={value}", "le": f"<={value}"}.get(compare, value)


def verify_applied(journal: Journal, tuner_set: TunerSet | None = None) -> VerifyResult:
    """Read every applied tunable back through its tuner (`tuner_set`: the operation's tuners, a new set without
    NVML session when not given)."""
    tuner_set = tuner_set if tuner_set is not None else TunerSet()
    data = journal.data
    txn = journal.open_txn
    trial = open_trial(journal)
    trial_targets = {w.target for w in txn.writes} if txn is not None and trial is not None else set()
    interrupted = f"interrupted {txn.kind} {txn.id} in the journal" if txn is not None and trial is None else None
    if data.applied is None:
        return VerifyResult(policy=None, interrupted=interrupted, trial=trial)
    result = VerifyResult(policy=data.applied.policy, applied_at=data.applied.at, interrupted=interrupted,
                          trial=trial)
    for change in data.applied.changes:
        if change.action not in ("change", "ok"):
            continue
        tuner = tuner_set.get(change.tuner)
        current = tuner.read(change)
        state: State
        if change.target in trial_targets:
            state = "trial"
        elif tuner.satisfied(change, current):
            state = "held"
        elif change.reboot_required:
            state = "pending_reboot"
        else:
            state = "drift" if current is not None else "unknown"
        shown, expected = current, expected_text(change.value, change.compare)
        if change.format == "text":  # whole files: say whether it is there and intact, not its content
            expected = "(file)"
            shown = None if current is None else "(file)" if state == "held" else "(file, edited)"
        result.items.append(VerifyItem(tuner=change.tuner, target=change.target, expected=expected, current=shown,
                                       state=state, field=change.field))
    return result
