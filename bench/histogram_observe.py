"""What the latency histograms cost the gateway's per-request path.

    .venv/bin/python bench/histogram_observe.py [--rounds 11] [--requests 20000] [--gaps 30] [--json FILE]

Two figures, each from alternating rounds (A B A B ...: slow drift on a shared machine hits both alike), reported
as the median over rounds with the spread (min and max):
- one `Histogram.observe` (a bisect into the 17 TTFT bounds and an integer increment) against one
  `LatencyWindow.observe` (the append the hot path already paid before histograms existed);
- one `GatewayStats.finish` of a typical streamed request (queue wait, TTFT, --gaps inter-token gaps, end-to-end)
  with the four real histograms against the same call with no-op histograms: the difference is what the
  histograms add to a request, the lock included (they observe under the lock `finish` already takes).
CPU time (time.thread_time) per call, single thread, no contention.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.gateway.stats import TTFT_BUCKETS, GatewayStats, RequestRecord
from agent.metrics.histogram import Histogram
from agent.metrics.window import LatencyWindow


class NullHistogram(Histogram):
    """The B arm: same call, no work."""

    def observe(self, value: float) -> None:
        return None

    def observe_many(self, values: Iterable[float]) -> None:
        return None


def timed(fn: Callable[[float], None], values: list[float]) -> float:
    """CPU seconds for fn over every value."""
    t0 = time.thread_time()
    for v in values:
        fn(v)
    return time.thread_time() - t0


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def observe_rounds(rounds: int, n: int) -> dict[str, dict[str, float]]:
    rng = random.Random(1)
    values = [rng.lognormvariate(-1.2, 0.8) for _ in range(n)]
    hist_ns: list[float] = []
    window_ns: list[float] = []
    for _ in range(rounds):
        hist_ns.append(timed(Histogram(TTFT_BUCKETS).observe, values) / n * 1e9)
        window_ns.append(timed(LatencyWindow(window_s=60, max_samples=n).observe, values) / n * 1e9)
    return {"histogram_observe_ns": spread(hist_ns), "latency_window_observe_ns": spread(window_ns)}


def finish_rounds(rounds: int, n: int, gaps: int) -> dict[str, dict[str, float]]:
    rng = random.Random(2)
    recs = [RequestRecord(route="/v1/chat/completions", stream=True, started=0.0,
                          queue_wait_s=rng.uniform(0, 0.01), ttft_s=rng.uniform(0.05, 1.5),
                          itl_s=[rng.uniform(0.005, 0.06) for _ in range(gaps)], e2e_s=rng.uniform(0.5, 5),
                          tokens_in=50, tokens_out=gaps + 1, outcome="ok") for _ in range(n)]

    def arm(null: bool) -> float:
        stats = GatewayStats(window_s=3600)
        if null:
            stats.ttft_hist = stats.itl_hist = stats.e2e_hist = stats.queue_wait_hist = NullHistogram((1,))
        t0 = time.thread_time()
        for r in recs:
            stats.finish(r)
        return (time.thread_time() - t0) / n * 1e6

    with_h: list[float] = []
    without: list[float] = []
    for _ in range(rounds):
        with_h.append(arm(False))
        without.append(arm(True))
    added = [a - b for a, b in zip(with_h, without, strict=True)]
    return {"finish_with_histograms_us": spread(with_h), "finish_null_histograms_us": spread(without),
            "histograms_add_per_request_us": spread(added)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--gaps", type=int, default=30)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = {"rounds": args.rounds, "requests": args.requests, "gaps_per_request": args.gaps,
           **observe_rounds(args.rounds, args.requests * 5), **finish_rounds(args.rounds, args.requests, args.gaps)}
    report = json.dumps(out, indent=2)
    print(report)
    if args.json is not None:
        args.json.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
