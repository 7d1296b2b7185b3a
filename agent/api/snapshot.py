"""GET /v1/status served from a cached snapshot: one computation shared by every concurrent reader.

Why: the status document reads the journal from disk; computed per request on the thread pool, 200 concurrent
readers queued behind 40 threads and the GIL (p99 4.2 s, docs/benchmarks.md). The snapshot is the JSON bytes of
the last computation, recomputed (off the event loop, once for all waiting readers) when it is older than
`max_age_s` or when the daemon's state generation moved (every apply, revert, rollback, reload, drift check and
worker event bumps it), so a reader never sees a status older than the last mutation it could know of.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from fastapi.encoders import jsonable_encoder

STATUS_MAX_AGE_S = 1.0


class Snapshot:
    def __init__(self, compute: Callable[[], Any], generation: Callable[[], int],
                 max_age_s: float = STATUS_MAX_AGE_S) -> None:
        self._compute = compute
        self._generation = generation
        self.max_age_s = max_age_s
        self._body: bytes | None = None
        self._generation_seen = -1
        self._taken_at = 0.0
        self._lock = asyncio.Lock()
        self.computations = 0

    def _fresh(self) -> bool:
        return (self._body is not None and self._generation_seen == self._generation()
                and time.monotonic() - self._taken_at < self.max_age_s)

    def invalidate(self) -> None:
        self._body = None

    async def get(self) -> bytes:
        if self._fresh() and self._body is not None:
            return self._body
        async with self._lock:  # one computation; readers that waited for it take its result
            if self._fresh() and self._body is not None:
                return self._body
            generation, taken_at = self._generation(), time.monotonic()
            document = await anyio.to_thread.run_sync(self._compute)
            body = json.dumps(jsonable_encoder(document)).encode()
            self.computations += 1
            self._body, self._generation_seen, self._taken_at = body, generation, taken_at
            return body
