"""Two more load shapes next to agent/bench/load.py's closed and open loops:

- **conversations** (closed loop of chat sessions): each of N users runs one conversation after another; every
  turn resends the whole history (system prompt, every earlier user turn and the assistant's reply text as the
  server sent it), the way chat clients do, under one stable session id (agent.bench.client.SESSION_HEADER).
  A failed turn ends that conversation (its user gives up), the next one starts.
- **timed arrivals** (open loop at given offsets): requests leave at fixed times after the start whatever the
  server's speed: a replayed traffic log, or a precomputed Poisson schedule whose rate changes over time.

The same rules as load.py: a level ends at its bounds; what is in flight then is awaited and counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.bench.client import RequestResult, send
from agent.bench.corpus import BenchRequest
from agent.bench.load import Bounds, Progress, Target, http_client, tick


@dataclass(frozen=True)
class Conversation:
    session: str                       # stable id sent with every turn
    system: str
    user_turns: tuple[str, ...]
    max_tokens: tuple[int, ...]        # per turn
    kind: str = "multiturn"


def conversation_request(conv: Conversation, replies: Sequence[str]) -> BenchRequest:
    """Turn len(replies) of the conversation: the system prompt, then each earlier user turn followed by the reply
    received for it, then this turn's user message."""
    turn = len(replies)
    if turn >= len(conv.user_turns):
        raise ValueError(f"conversation {conv.session} has {len(conv.user_turns)} turns, asked for turn {turn + 1}")
    messages: list[tuple[str, str]] = [("system", conv.system)]
    for user, reply in zip(conv.user_turns[:turn], replies, strict=True):
        messages += [("user", user), ("assistant", reply)]
    messages.append(("user", conv.user_turns[turn]))
    return BenchRequest(conv.kind, conv.system, conv.user_turns[turn], conv.max_tokens[turn],
                        messages=tuple(messages), session=conv.session)


@dataclass
class Collected:
    results: list[RequestResult]
    wall_s: float
    dropped: int = 0


async def conversations(target: Target, conversation: Callable[[int], Conversation], users: int, bounds: Bounds,
                        progress: Progress, label: str) -> Collected:
    """`users` clients, each running conversation(0), conversation(1), ... (a shared counter) turn by turn."""
    results: list[RequestResult] = []
    issued = 0
    in_flight = 0
    next_index = 0
    async with http_client(target, users) as client:
        started = time.monotonic()

        async def user() -> None:
            nonlocal issued, in_flight, next_index
            while bounds.open(started, issued):
                conv = conversation(next_index)
                next_index += 1
                replies: list[str] = []
                for _ in conv.user_turns:
                    if not bounds.open(started, issued):
                        return
                    issued += 1
                    in_flight += 1
                    try:
                        result = await send(client, target.url, target.api, conversation_request(conv, replies),
                                            started, target.model, target.ignore_eos, keep_text=True)
                    finally:
                        in_flight -= 1
                    results.append(result)
                    progress.update(label, started, bounds, results, in_flight)
                    if not result.ok:
                        break
                    replies.append(result.text or "")

        ticker = asyncio.ensure_future(tick(lambda: progress.update(label, started, bounds, results, in_flight)))
        try:
            await asyncio.gather(*(user() for _ in range(users)))
        finally:
            ticker.cancel()
        wall = time.monotonic() - started
    progress.update(label, started, bounds, results, 0, force=True)
    progress.done()
    return Collected(results, wall)


async def timed_arrivals(target: Target, timed: Sequence[tuple[float, BenchRequest]], bounds: Bounds,
                         progress: Progress, label: str, max_outstanding: int = 256,
                         span_s: float | None = None) -> Collected:
    """Send each request at its offset (seconds after the start, ascending); arrivals beyond max_outstanding in
    flight are dropped and counted, as in load.open_loop. With span_s the level lasts at least that long (a
    schedule's quiet tail is part of its wall time, as an open loop's would be)."""
    results: list[RequestResult] = []
    tasks: set[asyncio.Task[None]] = set()
    issued = 0
    dropped = 0
    async with http_client(target, max_outstanding) as client:
        started = time.monotonic()

        async def one(req: BenchRequest) -> None:
            results.append(await send(client, target.url, target.api, req, started, target.model,
                                      target.ignore_eos))

        ticker = asyncio.ensure_future(tick(lambda: progress.update(label, started, bounds, results, len(tasks))))
        try:
            for at_s, req in timed:
                delay = started + at_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not bounds.open(started, issued + dropped):
                    span_s = None  # ended by its bounds, not by the schedule
                    break
                if len(tasks) >= max_outstanding:
                    dropped += 1
                    continue
                issued += 1
                task = asyncio.ensure_future(one(req))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if span_s is not None:
                await asyncio.sleep(max(0.0, started + span_s - time.monotonic()))
            if tasks:
                await asyncio.gather(*list(tasks))
        finally:
            ticker.cancel()
        wall = time.monotonic() - started
    progress.update(label, started, bounds, results, 0, force=True)
    progress.done()
    return Collected(results, wall, dropped)
