"""`hosttune bench --scenario NAME`: seeded workloads shaped like real serving (the same seed sends the same
requests, byte for byte; multi-turn histories also carry what the server answered).

- chat: short user questions under one shared system prompt of a few hundred tokens, short answers; closed loop.
- multiturn: conversations of 4-8 turns, each turn resending the growing history (agent.bench.drivers), several
  conversations in parallel, each under a stable X-Session-Id; closed loop.
- rag: 1.5-3k-token prompts (retrieved passages + a question), short answers: prefill-bound; closed loop.
- burst: open loop, Poisson arrivals of chat requests at twice the base rate for the first third of the level,
  then half of it: queueing builds above capacity, then drains (and load shedding shows).

Defaults suit a 2-core host serving the bundled 135M model; --concurrency / --rate override them.
`run_scenario` (one measured level) and `run_requests_file` are the entry points `bench --compare` calls.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import dataclass, replace
from pathlib import Path

from agent.bench.corpus import PARAGRAPHS, QUESTIONS, BenchRequest, estimate_tokens
from agent.bench.drivers import Conversation, conversation_request, conversations
from agent.bench.load import (
    Bounds,
    Collected,
    LevelRun,
    Progress,
    RequestSource,
    Target,
    closed_loop,
    open_loop,
    timed_arrivals,
)
from agent.bench.requests_file import FileReplay, load_requests
from agent.bench.scenario_texts import EXTRA_QUESTIONS, FOLLOW_UPS, RAG_PREAMBLE, RAG_QUESTIONS, SYSTEM_PROMPT
from agent.errors import InputError

CHAT_QUESTIONS = QUESTIONS + EXTRA_QUESTIONS
RAG_TOKENS = (1500, 3000)          # estimated prompt tokens of a rag request (words * 1.3)
TURNS = (4, 8)                     # turns per multi-turn conversation
BURST_PHASES = ((1 / 3, 2.0), (1.0, 0.5))   # (end as a fraction of the level, rate multiplier)


@dataclass(frozen=True)
class ScenarioSpec:
    name: str
    mode: str                 # "closed" | "open": the load shape when neither --concurrency nor --rate is given
    concurrency: int          # default clients (closed loop)
    rate: float               # default arrivals/s (open loop; burst: the base rate of its phases)
    about: str


SCENARIOS = {s.name: s for s in (
    ScenarioSpec("chat", "closed", 4, 2.0, "short questions under a shared system prompt, short answers"),
    ScenarioSpec("multiturn", "closed", 4, 0.0, "4-8 turn conversations resending their history (X-Session-Id)"),
    ScenarioSpec("rag", "closed", 2, 0.5, "1.5-3k-token prompts of retrieved passages, short answers"),
    ScenarioSpec("burst", "open", 4, 2.0, "Poisson chat arrivals at 2x the base rate for 1/3, then 0.5x"),
)}


def spec_of(name: str) -> ScenarioSpec:
    if name not in SCENARIOS:
        raise InputError(f"unknown scenario {name!r} (expected one of {', '.join(SCENARIOS)})", field="--scenario")
    return SCENARIOS[name]


class ChatSource:
    kind = "chat"

    def draw(self, rng: random.Random) -> BenchRequest:
        return BenchRequest(self.kind, SYSTEM_PROMPT, rng.choice(CHAT_QUESTIONS), rng.randint(40, 96))


class BurstSource(ChatSource):
    kind = "burst"


class RagSource:
    def draw(self, rng: random.Random) -> BenchRequest:
        question = rng.choice(RAG_QUESTIONS)
        target = rng.randint(RAG_TOKENS[0] + 100, RAG_TOKENS[1] - 100)
        total = estimate_tokens(SYSTEM_PROMPT) + estimate_tokens(RAG_PREAMBLE) + estimate_tokens(question)
        passages: list[str] = []
        while True:
            text = f"[source {rng.randint(1, 999)}, score {rng.uniform(0.5, 0.95):.2f}] {rng.choice(PARAGRAPHS)}"
            cost = estimate_tokens(text)
            if total + cost > target:
                break
            passages.append(text)
            total += cost
        prompt = RAG_PREAMBLE + "\n\n" + "\n\n".join(passages) + "\n\nQuestion: " + question
        return BenchRequest("rag", SYSTEM_PROMPT, prompt, rng.randint(24, 64))


def conversation_plan(seed: int, index: int) -> Conversation:
    """Conversation `index` of a run seeded `seed`: the same whichever user runs it and whenever."""
    rng = random.Random(f"multiturn/{seed}/{index}")
    turns = rng.randint(*TURNS)
    users = [rng.choice(CHAT_QUESTIONS), *rng.sample(FOLLOW_UPS, turns - 1)]
    return Conversation(session=f"bench-{seed}-{index}", system=SYSTEM_PROMPT, user_turns=tuple(users),
                        max_tokens=tuple(rng.randint(40, 96) for _ in range(turns)))


@dataclass(frozen=True)
class Phase:
    start_s: float
    end_s: float
    rate: float


def burst_phases(base_rate: float, duration_s: float) -> list[Phase]:
    phases: list[Phase] = []
    start = 0.0
    for end_fraction, multiplier in BURST_PHASES:
        end = duration_s * end_fraction
        phases.append(Phase(start, end, base_rate * multiplier))
        start = end
    return phases


def arrival_times(phases: list[Phase], rng: random.Random) -> list[float]:
    """Poisson arrivals whose rate is constant within each phase (exponential gaps; a gap that crosses into the
    next phase is redrawn from the boundary at the new rate, which memorylessness makes exact)."""
    times: list[float] = []
    for phase in phases:
        if phase.rate <= 0:
            continue
        t = phase.start_s + rng.expovariate(phase.rate)
        while t < phase.end_s:
            times.append(t)
            t += rng.expovariate(phase.rate)
    return times


def burst_timeline(seed: int, base_rate: float, duration_s: float) -> list[tuple[float, BenchRequest]]:
    """(offset, request) of a burst level: arrivals from their own seeded stream, requests drawn as chat's are."""
    times = arrival_times(burst_phases(base_rate, duration_s), random.Random(f"burst/{seed}"))
    source = BurstSource()
    rng = random.Random(seed)
    return [(t, source.draw(rng)) for t in times]


def request_sequence(name: str, seed: int, n: int, reply: str = "(reply)") -> list[BenchRequest]:
    """The first n requests the scenario sends with this seed, in draw order (multiturn: against a server that
    answers every turn with `reply`): what the reproducibility test compares."""
    spec_of(name)
    if name == "multiturn":
        out: list[BenchRequest] = []
        index = 0
        while len(out) < n:
            conv = conversation_plan(seed, index)
            out += [conversation_request(conv, [reply] * t) for t in range(len(conv.user_turns))]
            index += 1
        return out[:n]
    source = source_of(name)
    rng = random.Random(seed)
    return [source.draw(rng) for _ in range(n)]


def source_of(name: str) -> RequestSource:
    """Single requests of the scenario (multiturn: a conversation's first turn, which is a chat request)."""
    if name == "rag":
        return RagSource()
    return BurstSource() if name == "burst" else ChatSource()


def check_level(name: str, duration_s: float | None, concurrency: int | None, rate: float | None) -> None:
    if duration_s is not None and duration_s <= 0:
        raise InputError("must be > 0", field="--duration")
    if concurrency is not None and rate is not None:
        raise InputError("one level is either closed loop (--concurrency) or open loop (--rate)", field="--rate")
    if concurrency is not None and concurrency < 1:
        raise InputError("must be >= 1", field="--concurrency")
    if rate is not None and rate <= 0:
        raise InputError("must be > 0", field="--rate")
    if name == "burst" and concurrency is not None:
        raise InputError("burst is open loop: give its base rate with --rate", field="--concurrency")
    if name == "multiturn" and rate is not None:
        raise InputError("multiturn is closed loop (conversations in parallel): use --concurrency", field="--rate")


async def scenario_level(target: Target, name: str, *, seed: int, duration_s: float,
                         concurrency: int | None = None, rate: float | None = None,
                         progress: Progress | None = None, requests: int | None = None,
                         max_outstanding: int = 256) -> LevelRun:
    spec = spec_of(name)
    check_level(name, duration_s, concurrency, rate)
    progress = progress or Progress(enabled=False)
    bounds = Bounds(duration_s=duration_s, requests=requests)
    rng = random.Random(seed)
    if name == "burst":
        base = rate or spec.rate
        got = await timed_arrivals(target, burst_timeline(seed, base, duration_s), bounds, progress,
                                   f"burst {base:g}/s", max_outstanding, span_s=duration_s)
        return LevelRun("open", base, got.results, got.wall_s, got.dropped, scenario=name, seed=seed)
    if name == "multiturn":
        users = concurrency or spec.concurrency
        got = await conversations(target, lambda i: conversation_plan(seed, i), users, bounds, progress,
                                  f"multiturn c={users}")
        return LevelRun("closed", users, got.results, got.wall_s, scenario=name, seed=seed)
    if rate is not None:
        run = await open_loop(target, source_of(name), rate, bounds, rng, progress, max_outstanding)
    else:
        run = await closed_loop(target, source_of(name), concurrency or spec.concurrency, bounds, rng, progress)
    return replace(run, scenario=name, seed=seed)


def run_scenario(target: Target, name: str, *, seed: int, duration_s: float, concurrency: int | None = None,
                 rate: float | None = None, progress: Progress | None = None) -> LevelRun:
    """One measured level of the scenario (closed loop at `concurrency`, or open loop at `rate`; the scenario's
    default shape when neither is given)."""
    return asyncio.run(scenario_level(target, name, seed=seed, duration_s=duration_s, concurrency=concurrency,
                                      rate=rate, progress=progress))


DEFAULT_FILE_CONCURRENCY = 4


async def file_level(target: Target, replay: FileReplay, *, seed: int = 1, duration_s: float | None = None,
                     concurrency: int | None = None, rate: float | None = None, progress: Progress | None = None,
                     max_outstanding: int = 256) -> LevelRun:
    """Replay the file once: at its own `at_s` offsets when it has them, else Poisson at `rate`, else closed
    loop at `concurrency` (default 4), in file order; a level ends early at `duration_s`."""
    check_level("requests-file", duration_s, concurrency, rate)
    if replay.timed and (concurrency is not None or rate is not None):
        raise InputError("the requests carry at_s arrival times: leave out --concurrency/--rate",
                         path=replay.path, field="--requests")
    progress = progress or Progress(enabled=False)
    bounds = Bounds(duration_s=duration_s, requests=len(replay.requests))
    label = replay.path.name
    got: Collected
    if replay.timed:
        got = await timed_arrivals(target, replay.timeline(), bounds, progress, label, max_outstanding)
        return LevelRun("open", 0.0, got.results, got.wall_s, got.dropped, scenario="requests-file", seed=seed)
    rng = random.Random(seed)
    if rate is not None:  # a finite Poisson schedule: the file is replayed once
        offsets = itertools.accumulate(rng.expovariate(rate) for _ in replay.requests)
        got = await timed_arrivals(target, list(zip(offsets, replay.requests, strict=True)), bounds, progress,
                                   label, max_outstanding)
        return LevelRun("open", rate, got.results, got.wall_s, got.dropped, scenario="requests-file", seed=seed)
    run = await closed_loop(target, replay.source(), concurrency or DEFAULT_FILE_CONCURRENCY, bounds, rng,
                            progress)
    return replace(run, scenario="requests-file", seed=seed)


def run_requests_file(target: Target, path: Path, *, seed: int = 1, duration_s: float | None = None,
                      concurrency: int | None = None, rate: float | None = None,
                      progress: Progress | None = None) -> LevelRun:
    """One level replaying a FILE.jsonl of requests (agent.bench.requests_file); a bad file raises InputError
    naming the file and line before anything is sent."""
    replay = load_requests(path)
    return asyncio.run(file_level(target, replay, seed=seed, duration_s=duration_s, concurrency=concurrency,
                                  rate=rate, progress=progress))
