"""A small built-in corpus and the request mixes `hosttune bench` draws from (no downloads).

Three shapes of real traffic, which stress an engine differently:
- chat: a short question and a short answer (prompt and decode both small: latency-bound);
- summarize: a long document and a short summary (prefill-heavy: TTFT grows with prompt length);
- generate: a short instruction and a long answer (decode-heavy: inter-token latency and tokens/s).
The texts below were written for this project. Lengths are jittered so requests do not run in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from agent.errors import InputError

QUESTIONS = (
    "What is the difference between a list and a tuple in Python?",
    "How do I keep basil alive on a windowsill in winter?",
    "Why does bread go stale faster in the fridge?",
    "Give me three ideas for a rainy Sunday afternoon with kids.",
    "What does a load balancer actually do?",
    "How long should I boil an egg for a soft yolk?",
    "Explain what a mortgage offset account is in two sentences.",
    "What is the capital of Australia, and why is it not Sydney?",
    "How do noise-cancelling headphones work?",
    "Suggest a name for a grey cat who likes boxes.",
    "What is a good way to start learning to draw?",
    "Why is the sky darker at the zenith than near the horizon?",
    "How can I make my morning routine less rushed?",
    "What is the difference between weather and climate?",
    "Write a friendly one-line reminder about tomorrow's team meeting.",
    "How do I politely decline an invitation to a party?",
    "What causes the seasons on Earth?",
    "Is it better to stretch before or after running?",
    "Explain recursion to a ten-year-old.",
    "What should I pack for a two-day hike in the mountains?",
)

PARAGRAPHS = (
    "The old footbridge over the river had been repaired so many times that hardly any of the original timber "
    "remained. Each spring the council sent two carpenters who replaced whatever planks the winter floods had "
    "loosened, and each autumn the townspeople argued about whether it was still the same bridge. The children "
    "did not care; for them it was simply the fastest way to the bakery on the far bank.",
    "Running a small vegetable garden is mostly a lesson in patience. Seeds sown too early rot in cold soil, and "
    "seedlings planted too late bolt in the first heatwave. The gardeners who do best keep a notebook: the date "
    "of the last frost, which beds flooded, which variety of tomato split after rain. After a few seasons the "
    "notebook becomes more valuable than any catalogue.",
    "When the regional railway switched to electronic timetables, the station clocks were left in place out of "
    "habit. Travellers still looked up at them before checking their phones, and the clocks, maintained by a "
    "retired engineer who volunteered on Saturdays, were rarely more than a few seconds wrong. Several times a "
    "year the digital boards failed, and the clocks quietly carried the whole service.",
    "A well-run kitchen depends less on the talent of its head chef than on its preparation. Onions are diced "
    "before service, sauces reduced, garnishes picked and stored in labelled tubs. During the evening rush the "
    "cooks are not inventing anything; they are assembling, quickly and precisely, what the morning shift "
    "prepared. A missing tub of chopped herbs can slow the entire line.",
    "The library's reading room was built with tall north-facing windows so that the light on the desks would "
    "stay even throughout the day. Architects at the time worried about glare on paper, not screens, yet the "
    "choice has aged well: visitors with laptops still prefer those desks, and the room stays cool in summer "
    "without any air conditioning at all.",
    "Most of the effort in moving house goes into deciding what not to take. Boxes of cables, manuals for "
    "appliances long since thrown away, and clothes kept for an occasion that never came all have to be picked "
    "up, considered and put down again. People who move often develop a ruthless eye and tend to own less, "
    "not because they value things less but because they have carried them more.",
    "Lighthouse keepers once kept detailed logs of the weather, passing ships and the state of the lamp. Those "
    "records, now digitised, turn out to be useful to climate researchers, who can compare storm frequency over "
    "more than a century at the same spot. The keepers wrote for their supervisors, never imagining that their "
    "careful notes on wind direction would one day feed a model of the changing coast.",
    "In a choir, the singers who are easiest to hear are rarely the best. A good chorister listens more than "
    "sings, matching the vowels and breathing of the people nearby so the section sounds like one voice. "
    "Conductors spend much of rehearsal on this blending, and audiences notice the result without being able to "
    "say what it is: the music simply sounds calm and whole.",
    "The neighbourhood repair café opens on the first Saturday of each month. People bring toasters, lamps, "
    "torn jackets and wobbly chairs, and volunteers with tools and patience try to fix them while the owners "
    "watch and learn. About two thirds of the items leave working. The rest leave with a diagnosis, which is "
    "often enough to make the owner decide whether a new part is worth ordering.",
    "Long-distance cyclists talk about the second wind that arrives after the first few hours, when the legs "
    "stop complaining and the rhythm takes over. What they talk about less is food: a rider on a long day burns "
    "far more energy than they can absorb, so the real skill lies in eating a little, often, before hunger "
    "shows up. Riders who wait until they feel empty rarely recover that day.",
    "A town's market square tells you a lot about its history. Wide squares were built for cattle fairs, narrow "
    "ones for fish and bread; arcades mean that the merchants were rich enough to want shelter from the rain. "
    "Today most squares host cafés and the occasional farmers' market, but the shape of the space still decides "
    "where people linger and where they simply pass through.",
    "Software teams that ship reliably tend to make small changes often. Each change is easy to review, easy to "
    "test and, when something breaks, easy to undo. Large changes feel efficient while they are being written "
    "but spend weeks waiting for review and arrive in production carrying several unrelated risks at once, so "
    "that when they fail nobody can say which part was to blame.",
)

INSTRUCTIONS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Write a detailed guide to planning a week-long cycling holiday on a budget.",
    "Describe, in several paragraphs, a day in the life of a baker in a small mountain village.",
    "Write an essay on why public libraries still matter in a digital age.",
    "Write a letter from a grandmother to her grandson who has just started university.",
    "Explain, step by step and with examples, how to organise a community repair café.",
    "Write a travel diary entry describing a night train journey across the countryside.",
    "Write a fable about a river that wanted to flow uphill, with a moral at the end.",
)

KINDS = ("chat", "summarize", "generate")
DEFAULT_MIX = {"chat": 0.6, "summarize": 0.2, "generate": 0.2}


TOKENS_PER_WORD = 1.3   # client-side estimate of prompt tokens (English prose, BPE tokenizers)


def estimate_tokens(text: str) -> int:
    return round(len(text.split()) * TOKENS_PER_WORD)


@dataclass(frozen=True)
class BenchRequest:
    kind: str
    system: str | None
    prompt: str
    max_tokens: int
    # a whole conversation ((role, content), ...) sent instead of system + prompt (multi-turn, replayed traffic)
    messages: tuple[tuple[str, str], ...] | None = None
    session: str | None = None       # sent as the X-Session-Id header (agent.bench.client.SESSION_HEADER)

    @property
    def tokens_est(self) -> int:
        if self.messages is not None:
            return sum(estimate_tokens(content) for _, content in self.messages)
        return estimate_tokens(self.system or "") + estimate_tokens(self.prompt)


@dataclass(frozen=True)
class MixSpec:
    weights: dict[str, float]
    long_prompt_words: int = 400
    max_tokens: int | None = None       # cap on every request's output (tests, small contexts)

    def draw(self, rng: random.Random) -> BenchRequest:
        kinds = [k for k in KINDS if self.weights.get(k, 0) > 0]
        kind = rng.choices(kinds, weights=[self.weights[k] for k in kinds])[0]
        req = make_request(kind, rng, self.long_prompt_words)
        if self.max_tokens is not None:
            req = BenchRequest(req.kind, req.system, req.prompt, min(req.max_tokens, self.max_tokens))
        return req


def _jitter(rng: random.Random, base: int, spread: float = 0.25) -> int:
    return max(1, round(base * rng.uniform(1 - spread, 1 + spread)))


def document(rng: random.Random, words: int) -> str:
    """Paragraphs in random order until about `words` words (a paragraph may repeat in long documents)."""
    out: list[str] = []
    count = 0
    order = list(PARAGRAPHS)
    rng.shuffle(order)
    i = 0
    while count < words:
        p = order[i % len(order)]
        out.append(p)
        count += len(p.split())
        i += 1
    return "\n\n".join(out)


def make_request(kind: str, rng: random.Random, long_prompt_words: int = 400) -> BenchRequest:
    if kind == "chat":
        return BenchRequest("chat", "You are a helpful, concise assistant.", rng.choice(QUESTIONS),
                            _jitter(rng, 96))
    if kind == "summarize":
        doc = document(rng, _jitter(rng, long_prompt_words))
        return BenchRequest("summarize", "You summarize documents accurately.",
                            f"Summarize the following text in three sentences.\n\n{doc}", _jitter(rng, 96))
    if kind == "generate":
        return BenchRequest("generate", "You are a thoughtful writer.", rng.choice(INSTRUCTIONS), _jitter(rng, 384))
    raise InputError(f"unknown request kind {kind!r} (expected one of {', '.join(KINDS)})", field="--mix")


def parse_mix(text: str | None) -> dict[str, float]:
    """'chat=6,summarize=2,generate=2' or a single kind ('generate'); default: 60/20/20."""
    if not text:
        return dict(DEFAULT_MIX)
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.strip().partition("=")
        if name not in KINDS:
            raise InputError(f"unknown request kind {name!r} (expected {', '.join(KINDS)})", field="--mix")
        try:
            weights[name] = float(value) if value else 1.0
        except ValueError:
            raise InputError(f"weight of {name} is not a number: {value!r}", field="--mix") from None
        if weights[name] < 0:
            raise InputError(f"weight of {name} is negative", field="--mix")
    if sum(weights.values()) <= 0:
        raise InputError("all weights are zero", field="--mix")
    return weights
