"""The policy's `controller:` section: which OS changes the controller may try on live traffic (`os_trials`) and
which of them it keeps when they are neutral (`required`). What each name changes is agent/control/os_trials.py.

Hostile input: names come from an allow-list (a Literal), each at most once, `required` only among `os_trials`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

OsTrialName = Literal["thp", "thp_defrag", "numa_balancing", "governor"]
OS_TRIAL_NAMES: tuple[str, ...] = ("thp", "thp_defrag", "numa_balancing", "governor")


class ControllerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    os_trials: list[OsTrialName] = Field(default_factory=list, max_length=len(OS_TRIAL_NAMES), description=(
        "OS changes the controller may try, one at a time, once the engine knobs have converged: kept only when "
        "tokens/s rose by more than the dead band with the SLO held"))
    required: list[OsTrialName] = Field(default_factory=list, max_length=len(OS_TRIAL_NAMES), description=(
        "trials kept when neutral (within the dead band, SLO held); still undone when they lose or break the SLO"))

    @model_validator(mode="after")
    def _consistent(self) -> ControllerSpec:
        for field in ("os_trials", "required"):
            names: list[str] = getattr(self, field)
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{field}: {', '.join(twice)} listed twice")
        extra = [n for n in self.required if n not in self.os_trials]
        if extra:
            raise ValueError(f"required: {', '.join(extra)} not in os_trials (a required trial must be allowed)")
        return self
