"""Load shedding: refuse at once a request that would wait past the TTFT SLO anyway.

Under overload the admission queue grows until queue_timeout_s; every request in it waits, and once the wait alone
exceeds the SLO each one misses it: the engine spends its time on answers that are already late, and goodput
(requests/s that met the SLO) falls. Predicting the wait of a newcomer is cheap: the gate serves `limit` requests
at once and each takes about the recent service time, so the newcomer, with `queued` ahead of it, waits about
(queued + 1) x service / limit. Above the budget (the policy's TTFT SLO) it gets 503 + Retry-After now and may try
again (or elsewhere) instead of holding a place in a queue that misses the SLO.

Pure decisions (`predicted_wait_s`, `shed_retry_after`) over the gate's state and a small service-time window.
"""

from __future__ import annotations

import math
from collections import deque

SERVICE_WINDOW = 32   # recent requests the service time is averaged over
MIN_SAMPLES = 3       # no estimate (and no shedding) before this many finished requests
MAX_RETRY_AFTER_S = 60


class ServiceClock:
    """Recent service times (admission to the worker's last byte) of requests the worker answered."""

    def __init__(self, window: int = SERVICE_WINDOW) -> None:
        self._times: deque[float] = deque(maxlen=window)

    def record(self, seconds: float) -> None:
        if math.isfinite(seconds) and seconds >= 0:
            self._times.append(seconds)

    def clear(self) -> None:
        """A new regime (the worker restarted with other knobs): old service times say nothing."""
        self._times.clear()

    def estimate(self) -> float | None:
        if len(self._times) < MIN_SAMPLES:
            return None
        return sum(self._times) / len(self._times)


def predicted_wait_s(queued: int, in_flight: int, limit: int, service_s: float | None) -> float:
    """How long a request arriving now waits for admission. 0 when it is admitted at once, or nothing is known.
    In-flight requests beyond the limit (it was just lowered) are still ahead of the newcomer."""
    if service_s is None or (queued == 0 and in_flight < limit):
        return 0.0
    return (queued + max(0, in_flight - limit) + 1) * service_s / max(1, limit)


def shed_retry_after(queued: int, in_flight: int, limit: int, service_s: float | None,
                     budget_s: float | None) -> int | None:
    """Retry-After seconds when a request arriving now should be refused (its predicted wait exceeds budget_s),
    else None. The hint is the predicted wait, rounded up, at least 1 s, at most a minute."""
    if budget_s is None:
        return None
    wait = predicted_wait_s(queued, in_flight, limit, service_s)
    if wait <= budget_s:
        return None
    return max(1, min(MAX_RETRY_AFTER_S, math.ceil(wait)))
