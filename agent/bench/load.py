"""Load shapes: closed loop (N clients, each sends its next request when the last one finished) and open loop
(Poisson arrivals at a fixed rate, whatever the server's speed — the shape that exposes queueing).

A level ends when --duration has passed or --requests have been issued, whichever comes first; requests still
in flight then are awaited (bounded by the request timeout), and the level's wall time runs until the last one
finished, so tokens/s is never inflated by leaving slow requests out.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, TextIO

import httpx

from agent.bench.client import RequestResult, send
from agent.bench.corpus import BenchRequest


class RequestSource(Protocol):
    """Where a loop takes its next request (a MixSpec, a scenario, a replayed file)."""

    def draw(self, rng: random.Random) -> BenchRequest: ...


@dataclass(frozen=True)
class Target:
    url: str
    api: str = "chat"
    model: str | None = None
    ignore_eos: bool = False
    timeout_s: float = 300.0


@dataclass(frozen=True)
class Bounds:
    duration_s: float | None = 30.0
    requests: int | None = None

    def open(self, started: float, issued: int) -> bool:
        if self.requests is not None and issued >= self.requests:
            return False
        return not (self.duration_s is not None and time.monotonic() - started >= self.duration_s)


@dataclass
class LevelRun:
    mode: str                 # "closed" | "open"
    value: float              # concurrency or arrivals/s
    results: list[RequestResult]
    wall_s: float
    dropped: int = 0          # open loop: arrivals not sent because --max-outstanding was reached
    scenario: str | None = None   # `hosttune bench --scenario` name (or "requests-file"), None for a mix
    seed: int | None = None

    @property
    def label(self) -> str:
        shape = f"c={int(self.value)}" if self.mode == "closed" else f"rate={self.value:g}/s"
        if self.scenario == "requests-file" and self.mode == "open" and self.value == 0:
            shape = "at_s"   # replayed at the file's own arrival times
        return shape if self.scenario is None else f"{self.scenario} {shape}"


class Progress:
    """One status line on stderr: rewritten in place on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, out: TextIO | None = None, enabled: bool = True, every_s: float = 0.5) -> None:
        self.out = out or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.every_s = every_s if self.tty else 5.0
        self._last = 0.0

    def update(self, label: str, started: float, bounds: Bounds, results: list[RequestResult],
               in_flight: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        elapsed = now - started
        ok = sum(1 for r in results if r.ok)
        tokens = sum(r.tokens_out for r in results if r.ok)
        limit = f"/{bounds.duration_s:g}s" if bounds.duration_s else "s"
        req_limit = f"/{bounds.requests}" if bounds.requests else ""
        line = (f"[{label}] {elapsed:5.1f}{limit}  done {len(results)}{req_limit}  ok {ok}  "
                f"err {len(results) - ok}  in-flight {in_flight}  {tokens / max(elapsed, 1e-9):7.1f} tok/s")
        if self.tty:
            self.out.write("\r\x1b[2K" + line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            self.out.write("\n")
            self.out.flush()


def http_client(target: Target, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(target.timeout_s, connect=10.0),
                             limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))


async def watch(work: Awaitable[object], progress: Progress, label: str, started: float, bounds: Bounds,
                results: list[RequestResult], in_flight: Callable[[], int]) -> float:
    """Await a level's work with its progress line ticking; the level's wall time (its last reply included)."""
    ticker = asyncio.ensure_future(tick(lambda: progress.update(label, started, bounds, results, in_flight())))
    try:
        await work
    finally:
        ticker.cancel()
    wall = time.monotonic() - started
    progress.update(label, started, bounds, results, 0, force=True)
    progress.done()
    return wall


async def closed_loop(target: Target, mix: RequestSource, concurrency: int, bounds: Bounds, rng: random.Random,
                      progress: Progress) -> LevelRun:
    results: list[RequestResult] = []
    issued = 0
    in_flight = 0
    label = f"c={concurrency}"
    async with http_client(target, concurrency) as client:
        started = time.monotonic()

        async def user() -> None:
            nonlocal issued, in_flight
            while bounds.open(started, issued):
                issued += 1
                in_flight += 1
                try:
                    results.append(await send(client, target.url, target.api, mix.draw(rng), started,
                                              target.model, target.ignore_eos))
                finally:
                    in_flight -= 1
                progress.update(label, started, bounds, results, in_flight)

        wall = await watch(asyncio.gather(*(user() for _ in range(concurrency))), progress, label, started, bounds,
                           results, lambda: in_flight)
    return LevelRun("closed", concurrency, results, wall)


async def open_loop(target: Target, mix: RequestSource, rate: float, bounds: Bounds, rng: random.Random,
                    progress: Progress, max_outstanding: int = 256) -> LevelRun:
    def poisson() -> Iterator[tuple[float, BenchRequest]]:
        at_s = 0.0
        while True:
            at_s += rng.expovariate(rate)
            yield at_s, mix.draw(rng)

    got = await timed_arrivals(target, poisson(), bounds, progress, f"rate={rate:g}/s", max_outstanding)
    return LevelRun("open", rate, got.results, got.wall_s, got.dropped)


@dataclass
class Collected:
    results: list[RequestResult]
    wall_s: float
    dropped: int = 0


async def timed_arrivals(target: Target, timed: Iterable[tuple[float, BenchRequest]], bounds: Bounds,
                         progress: Progress, label: str, max_outstanding: int = 256,
                         span_s: float | None = None) -> Collected:
    """Open loop: send each request at its offset (seconds after the start, ascending), whatever the server's
    speed; arrivals beyond max_outstanding in flight are dropped and counted. With span_s the level lasts at least
    that long (a schedule's quiet tail is part of its wall time)."""
    results: list[RequestResult] = []
    tasks: set[asyncio.Task[None]] = set()
    issued = 0
    dropped = 0
    async with http_client(target, max_outstanding) as client:
        started = time.monotonic()

        async def one(req: BenchRequest) -> None:
            results.append(await send(client, target.url, target.api, req, started, target.model,
                                      target.ignore_eos))

        async def arrivals() -> None:
            nonlocal issued, dropped
            ended_by_bounds = False
            for at_s, req in timed:
                delay = started + at_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not bounds.open(started, issued + dropped):
                    ended_by_bounds = True
                    break
                if len(tasks) >= max_outstanding:
                    dropped += 1
                    continue
                issued += 1
                task = asyncio.ensure_future(one(req))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if span_s is not None and not ended_by_bounds:
                await asyncio.sleep(max(0.0, started + span_s - time.monotonic()))
            if tasks:
                await asyncio.gather(*list(tasks))

        wall = await watch(arrivals(), progress, label, started, bounds, results, lambda: len(tasks))
    return Collected(results, wall, dropped)


async def tick(fn: Callable[[], None], every_s: float = 0.5) -> None:
    while True:
        await asyncio.sleep(every_s)
        fn()
