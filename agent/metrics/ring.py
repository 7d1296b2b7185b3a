"""A fixed-size ring of samples: the last N seconds of telemetry at 1 Hz, memory bounded by construction."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class RingBuffer(Generic[T]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("ring capacity must be at least 1")
        self.capacity = capacity
        self._items: deque[T] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.appended = 0  # total ever appended, so readers can tell how many were overwritten

    def append(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            self.appended += 1

    def latest(self) -> T | None:
        with self._lock:
            return self._items[-1] if self._items else None

    def items(self, where: Callable[[T], bool] | None = None) -> list[T]:
        """Oldest first; optionally only those `where` accepts."""
        with self._lock:
            snapshot = list(self._items)
        return snapshot if where is None else [i for i in snapshot if where(i)]

    def last(self, n: int) -> list[T]:
        with self._lock:
            return list(self._items)[-n:] if n > 0 else []

    def __len__(self) -> int:
        return len(self._items)
