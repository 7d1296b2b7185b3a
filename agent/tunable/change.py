"""Change: one tunable in a plan. The JSON output of plan/apply and the applied state in the journal use it.

`satisfies` decides whether a value read from the host meets a Change's value (eq, or the at-least/at-most
constraints ge/le); `change` builds a file-backed Change whose action follows from that comparison.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from agent.tunable import formats
from agent.tunable.formats import Format

Action = Literal["change", "ok", "not_applicable", "unsupported"]
Compare = Literal["eq", "ge", "le"]


class Change(BaseModel):
    """One tunable in a plan. JSON output of plan/apply and the applied state in the journal use this shape."""

    tuner: str
    target: str = Field(description="what is tuned, e.g. vm.swappiness, hugepages-2048kB/node0, block/vda/scheduler")
    current: str | None = Field(None, description="value the host holds now (None: absent or unreadable)")
    desired: str | None = Field(None, description="what the policy asks for, as written (e.g. '>=1048576')")
    action: Action
    reason: str = ""
    field: str | None = Field(None, description="policy field path, e.g. sysctl.vm.swappiness (for file:line)")
    reboot_required: bool = Field(False, description="advice only: takes effect after a reboot, never applied")
    warnings: list[str] = Field(default_factory=list, description="e.g. another tuning daemon manages this")
    path: str | None = Field(None, description="host file that holds the value (None for non-file tunables)")
    value: str | None = Field(None, description="the concrete value apply writes and verify expects")
    format: Format = "scalar"
    compare: Compare = Field("eq", description="eq, or ge/le for at-least/at-most constraints")
    stale: bool = Field(False, description="puts back a journaled original: an earlier policy set this target, "
                                           "the current one does not")

    @property
    def key(self) -> str:
        return f"{self.tuner}:{self.target}"

    @property
    def writes(self) -> bool:
        """True when applying this change writes to the host."""
        return self.action == "change" and not self.reboot_required


def satisfies(current: str | None, value: str | None, compare: Compare, fmt: Format = "scalar") -> bool:
    """Does `current` meet `value` under `compare`? Constraints compare the first integer field."""
    if current is None or value is None:
        return False
    if compare == "eq":
        if fmt == "text":
            return current == value
        return formats.normalize(current) == formats.normalize(value)
    try:
        have, bound = int(current.split()[0]), int(value.split()[0])
    except (ValueError, IndexError):
        return False
    return have >= bound if compare == "ge" else have <= bound



def change(tuner: str, target: str, *, current: str | None, desired: str | None, value: str | None,
           path: Path | None, field: str | None, fmt: Format = "scalar", compare: Compare = "eq",
           ok_reason: str = "already set", change_reason: str = "") -> Change:
    """A file-backed Change whose action is decided by comparing current with value."""
    ok = satisfies(current, value, compare, fmt)
    return Change(tuner=tuner, target=target, current=current, desired=desired,
                  action="ok" if ok else "change", reason=ok_reason if ok else change_reason, field=field,
                  path=str(path) if path is not None else None, value=value, format=fmt, compare=compare)
