"""The daemon's recent events (apply, revert, drift, worker and controller starts), shown by GET /v1/status, and
the generation counter that tells a cached status it moved."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

log = logging.getLogger(__name__)


class EventLog:
    def __init__(self, keep: int = 200) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=keep)
        self.generation = 0  # bumped by every event: readers of a cached status know it moved

    def record(self, kind: str, **fields: Any) -> None:
        self.events.append({"time": time.time(), "kind": kind, **fields})
        self.generation += 1
        log.info("%s %s", kind, " ".join(f"{k}={v}" for k, v in fields.items()))

    def bump(self) -> None:
        """The tuning state may have moved without an event (a failed apply journaled its rollback)."""
        self.generation += 1

    def recent(self, n: int) -> list[dict[str, Any]]:
        return list(self.events)[-n:]
