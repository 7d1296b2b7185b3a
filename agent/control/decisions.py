"""Every controller decision, with what it changed, why, the measurements before and after, and how it ended.

A slow step is one decision that changes over time (trial -> kept | rolled_back | fallback); the log keeps the
latest version of each in memory (bounded) and appends every version as one JSON line to
<state-dir>/controller/decisions.jsonl, so the file is the full history and a reader takes the last line per id.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.errors import InputError
from agent.fsio import read_text_capped
from agent.worker.logs import RotatingLog

Lever = Literal["admission", "knobs", "os"]   # os: an OS trial (agent/control/os_trials.py)
Action = Literal["increase", "decrease", "step", "rollback", "fallback"]
Outcome = Literal["applied", "trial", "kept", "rolled_back", "fallback", "aborted"]

LOG_MAX_BYTES = 16 << 20  # the log rotates at 5 MiB by default: a larger file is not ours


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int
    lever: Lever
    action: Action
    t: float = Field(description="controller clock (monotonic seconds) when decided")
    at: float | None = Field(None, description="wall clock (Unix seconds) when decided")
    before: dict[str, Any]
    after: dict[str, Any]
    reason: str
    outcome: Outcome
    outcome_reason: str | None = None
    decided_t: float | None = Field(None, description="controller clock when the outcome was settled")
    measured_before: dict[str, Any] | None = None
    measured_after: dict[str, Any] | None = None


class DecisionLog:
    """Bounded in memory, complete on disk (rotated by size). Thread-safe: the controller's job writes, the API
    reads."""

    def __init__(self, path: Path | None = None, keep: int = 500, max_bytes: int = 5 * 1024 * 1024,
                 backups: int = 2, wall: Any = time.time) -> None:
        self.path = path
        self.keep = keep
        self._wall = wall
        self._items: OrderedDict[int, Decision] = OrderedDict()
        self._lock = threading.Lock()
        self._file = RotatingLog(path, max_bytes, backups) if path is not None else None
        self.last_id = 0
        self._taken: Counter[tuple[str, str]] = Counter()   # (lever, action) of decisions new to this log
        if path is not None and path.exists():
            for d in _read_tolerant(path)[-keep:]:
                self._items[d.id] = d
            self.last_id = _last_id(path)

    def record(self, d: Decision) -> Decision:
        """Add or update a decision (same id = a later version). Stamps the wall clock on first sight."""
        with self._lock:
            old = self._items.get(d.id)
            if d.id > self.last_id:  # ids only grow: a higher one is a new decision, not a later version
                self._taken[(d.lever, d.action)] += 1
            if d.at is None:
                d = d.model_copy(update={"at": old.at if old is not None and old.at is not None else self._wall()})
            self._items[d.id] = d
            self.last_id = max(self.last_id, d.id)
            self._items.move_to_end(d.id)
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        if self._file is not None:
            self._file.write_json(d.model_dump(mode="json"))
        return d

    def decisions(self) -> list[Decision]:
        """Oldest first, the latest version of each."""
        with self._lock:
            return sorted(self._items.values(), key=lambda d: d.id)

    def taken(self) -> Counter[tuple[str, str]]:
        """How many decisions this log has taken since it was opened, by (lever, action): the Prometheus counter
        hosttune_controller_decisions_total (decisions read back from an earlier run's file are not counted)."""
        with self._lock:
            return Counter(self._taken)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read_decisions(path: Path) -> list[Decision]:
    """The decisions in a JSONL file (rotated files first, oldest first), latest version of each id."""
    files = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit()
                   else 0)
    latest: dict[int, Decision] = {}
    for f in [*files, path]:
        if not f.exists():
            continue
        for n, line in enumerate(read_text_capped(f, LOG_MAX_BYTES).splitlines(), 1):
            if not line.strip():
                continue
            try:
                d = Decision.model_validate(json.loads(line))
            except (ValueError, TypeError) as e:
                raise InputError(f"not a controller decision: {str(e).splitlines()[0]}", path=f, line=n) from None
            latest[d.id] = d
    return sorted(latest.values(), key=lambda d: d.id)


def _read_tolerant(path: Path) -> list[Decision]:
    """Decisions from the current file, skipping lines that do not parse (a daemon must start even if its log
    was truncated by a crash mid-write)."""
    latest: dict[int, Decision] = {}
    for line in read_text_capped(path, LOG_MAX_BYTES, errors="replace").splitlines():
        try:
            d = Decision.model_validate(json.loads(line))
        except (ValueError, TypeError):
            continue
        latest[d.id] = d
    return sorted(latest.values(), key=lambda d: d.id)


def _last_id(path: Path) -> int:
    """The highest decision id already on disk, so ids stay unique across daemon restarts."""
    last = 0
    if path.exists():
        for line in read_text_capped(path, LOG_MAX_BYTES, errors="replace").splitlines():
            try:
                last = max(last, int(json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError):
                continue
    return last
