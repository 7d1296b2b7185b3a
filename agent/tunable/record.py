"""Record: a host value hosttune is about to change, and how to put it back (the journal's unit)."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from agent.tunable.formats import Format


class Record(BaseModel):
    """A host value hosttune is about to change, and how to put it back."""

    tuner: str
    target: str
    path: str | None = Field(None, description="file written; None for non-file tunables (NVML)")
    original_raw: str | None = Field(None, description="exact bytes before the write (latin-1); None: absent")
    restore_value: str | None = Field(None, description="what to write to a live kernel file to restore it")
    desired: str | None = None
    format: Format = "scalar"
    side_effect_of: str | None = Field(None, description="key of the write that changes this target as a side effect")
    extra: dict[str, Any] = Field(default_factory=dict, description="tuner-specific restore data (NVML)")
    expected_raw: str | None = Field(None, description="originals only: what the file held when hosttune's last "
                                     "apply committed; a different value now means someone else changed it since "
                                     "(None: not known, e.g. a side-effect record or a journal from before)")
    at: float = Field(default_factory=time.time)

    @property
    def key(self) -> str:
        return f"{self.tuner}:{self.target}"
