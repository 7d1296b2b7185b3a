"""Conversations, one more load shape next to agent/bench/load.py's closed loop, open loop and timed arrivals:
each of N users runs one conversation after another (a closed loop of chat sessions); every turn resends the whole
history (system prompt, every earlier user turn and the assistant's reply text as the server sent it), the way
chat clients do, under one stable session id (agent.bench.client.SESSION_HEADER). A failed turn ends that
conversation (its user gives up) and the next one starts. As in load.py, a level ends at its bounds; what is in
flight then is awaited and counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.bench.client import RequestResult, send
from agent.bench.corpus import BenchRequest
from agent.bench.load import Bounds, Collected, Progress, Target, http_client, watch


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

        wall = await watch(asyncio.gather(*(user() for _ in range(users))), progress, label, started, bounds,
                           results, lambda: in_flight)
    return Collected(results, wall)
