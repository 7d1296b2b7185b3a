"""Continuous batching on a tiny real Llama (float64, random weights), driven step by step in-process: every output
is compared token for token with an oracle that decodes each prompt alone without any KV cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.torch_tiny import oracle, require_torch, tiny_model

torch = require_torch()

from agent.worker.torch_server.kvcache import cache_kwarg  # noqa: E402
from agent.worker.torch_server.scheduler import MAX_OOM_RETRIES, Scheduler  # noqa: E402
from agent.worker.torch_server.sequence import Event, SamplingParams, Seq  # noqa: E402

PROMPTS = [[5, 9, 13], [7, 3, 22, 41, 8, 19, 2], [11], [30, 31, 32, 33, 34], [60, 2, 17, 17, 90, 4, 4, 4, 1, 70, 12]]


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_model()


@pytest.fixture(scope="module")
def expected(model: Any) -> dict[int, list[int]]:
    return {i: oracle(model, p, 12) for i, p in enumerate(PROMPTS)}


class Client:
    """One request's view: what the scheduler sent to its sink."""

    def __init__(self, prompt: list[int], max_tokens: int, stream: bool = True, **params: Any) -> None:
        self.events: list[Event] = []
        self.seq = Seq(prompt_ids=list(prompt), params=SamplingParams(max_tokens=max_tokens, **params),
                       sink=self.events.append, decode=lambda ids: "".join(f"<{i}>" for i in ids),
                       eos_ids=frozenset(), stream=stream)

    @property
    def tokens(self) -> list[int]:
        return [t for e in self.events if e.kind == "delta" for t in e.token_ids]

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if e.kind == "delta")

    @property
    def done(self) -> Event | None:
        return next((e for e in self.events if e.kind in ("done", "error")), None)


def sched(model: Any, **kw: Any) -> Scheduler:
    return Scheduler(model, device=torch.device("cpu"), dtype=torch.float64, **kw)


def run(s: Scheduler, clients: list[Client], limit: int = 500,
        each_step: Callable[[int], None] | None = None) -> list[int]:
    """Step until every client is done; returns the rows of each decode step."""
    rows: list[int] = []
    for i in range(limit):
        if all(c.done for c in clients):
            return rows
        if each_step:
            each_step(i)
        before = s.counters.decode_steps
        s.step()
        if s.counters.decode_steps > before:
            rows.append(s.counters.last_step_rows)
    raise AssertionError(f"not finished after {limit} steps: {[c.done for c in clients]}")


def check(clients: list[Client], expected: dict[int, list[int]], idx: list[int], n: list[int]) -> None:
    for c, i, k in zip(clients, idx, n, strict=True):
        assert c.done is not None and c.done.kind == "done", c.events[-1:]
        assert c.tokens == expected[i][:k], f"prompt {i}"
        assert c.text == "".join(f"<{t}>" for t in expected[i][:k])   # each token's text sent exactly once
        assert c.done.completion_tokens == k and c.done.prompt_tokens == len(PROMPTS[i])
        assert c.done.finish_reason == "length"


def test_alone_equals_oracle(model: Any, expected: dict[int, list[int]]) -> None:
    s = sched(model, max_batch=1)
    c = Client(PROMPTS[1], 12)
    s.submit(c.seq)
    assert run(s, [c]) == [1] * 11   # first token from the prefill, 11 decode steps
    check([c], expected, [1], [12])


def test_staggered_joins_and_leaves_equal_oracle(model: Any, expected: dict[int, list[int]]) -> None:
    """Prompts of different lengths join a running batch at different steps (the new row or the old rows get
    left padding) and leave at different lengths (columns trimmed): every output still matches the oracle."""
    s = sched(model, max_batch=8)
    lengths = [12, 5, 9, 12, 3]
    clients = [Client(PROMPTS[i], lengths[i]) for i in range(5)]
    s.submit(clients[0].seq)
    s.submit(clients[2].seq)

    def later(step: int) -> None:
        if step == 2:
            s.submit(clients[1].seq)   # longer than the running rows: old rows padded
        if step == 4:
            s.submit(clients[3].seq)
            s.submit(clients[4].seq)   # longest prompt joins last

    rows = run(s, clients, each_step=later)
    check(clients, expected, list(range(5)), lengths)
    assert max(rows) == 5
    assert s.batch.cache is None and s.batch.columns == 0


def test_max_batch_raised_and_lowered_live(model: Any, expected: dict[int, list[int]]) -> None:
    s = sched(model, max_batch=1)
    clients = [Client(p, 12, stream=i % 2 == 0) for i, p in enumerate(PROMPTS)]   # streaming and not
    for c in clients:
        s.submit(c.seq)

    def levers(step: int) -> None:
        if step == 3:
            s.configure({"max_batch": 4})
        if step == 8:
            s.configure({"max_batch": 2})   # two running rows go back to the queue with their progress

    rows = run(s, clients, each_step=levers)
    check(clients, expected, list(range(5)), [12] * 5)
    assert rows[:2] == [1, 1] and 4 in rows and rows[-1] <= 2
    assert s.counters.requests_requeued >= 2
    assert all(c.seq.requeues <= 1 for c in clients)


def test_kv_budget_queues_instead_of_failing(model: Any, expected: dict[int, list[int]]) -> None:
    s = sched(model, max_batch=8, kv_budget_tokens=2 * (5 + 10))   # two of the 5-token prompts at a time
    clients = [Client(PROMPTS[3], 10) for _ in range(5)]
    for c in clients:
        s.submit(c.seq)
    peak = 0

    def watch(_: int) -> None:
        nonlocal peak
        peak = max(peak, s.batch.reserved_tokens)

    rows = run(s, clients, each_step=watch)
    assert max(rows) == 2 and peak <= 30
    for c in clients:
        assert c.done is not None and c.done.kind == "done" and c.tokens == expected[3][:10]


def test_request_larger_than_budget_runs_alone(model: Any, expected: dict[int, list[int]]) -> None:
    s = sched(model, max_batch=8, kv_budget_tokens=4)
    clients = [Client(PROMPTS[0], 6), Client(PROMPTS[2], 6)]
    for c in clients:
        s.submit(c.seq)
    assert set(run(s, clients)) == {1}
    check(clients, expected, [0, 2], [6, 6])


def test_lowered_budget_preempts_newest(model: Any, expected: dict[int, list[int]]) -> None:
    s = sched(model, max_batch=8)
    clients = [Client(PROMPTS[i], 12) for i in range(4)]
    for c in clients:
        s.submit(c.seq)

    def lower(step: int) -> None:
        if step == 3:
            s.configure({"kv_budget_tokens": clients[0].seq.reserve + clients[1].seq.reserve})

    rows = run(s, clients, each_step=lower)
    assert rows[0] == 4 and max(rows[3:]) == 2
    check(clients, expected, [0, 1, 2, 3], [12] * 4)


def test_injected_oom_halves_batch_and_every_request_completes(model: Any, expected: dict[int, list[int]]) -> None:
    s = sched(model, max_batch=8)
    clients = [Client(p, 12) for p in PROMPTS[:4]]
    for c in clients:
        s.submit(c.seq)

    def inject(step: int) -> None:
        if step == 4:
            s.configure({"inject_oom": 1})

    rows = run(s, clients, each_step=inject)
    assert s.counters.oom_total == 1 and s.max_batch == 2
    ev = s.ooms[-1]
    assert (ev.injected, ev.phase, ev.rows, ev.max_batch_before, ev.max_batch_after, ev.requeued, ev.failed) == (
        True, "decode", 4, 8, 2, 4, 0)
    assert max(rows[rows.index(4) + 4:]) <= 2
    check(clients, expected, [0, 1, 2, 3], [12] * 4)


class RowLimitedModel(torch.nn.Module):
    """The real model behind a memory limit: a forward with more than `rows` sequences raises the CUDA
    out-of-memory error, as a GPU that can hold only that many would."""

    def __init__(self, inner: Any, rows: int) -> None:
        super().__init__()
        self.inner, self.rows, self.refused = inner, rows, 0

    def forward(self, input_ids: Any, cache: Any = None, **kw: Any) -> Any:
        if input_ids.shape[0] > self.rows:
            self.refused += 1
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (test limit {self.rows} rows)")
        return self.inner(input_ids=input_ids, **{cache_kwarg(type(self.inner)): cache}, **kw)


def test_real_oom_exception_shrinks_until_it_fits(model: Any, expected: dict[int, list[int]]) -> None:
    limited = RowLimitedModel(model, rows=2)
    s = sched(limited, max_batch=16)
    clients = [Client(p, 12) for p in PROMPTS]
    for c in clients:
        s.submit(c.seq)
    rows = run(s, clients)
    check(clients, expected, list(range(5)), [12] * 5)
    assert limited.refused >= 1 and s.max_batch <= 2 and max(rows) <= 2
    assert [e.max_batch_after for e in s.ooms][:2] == [2] or s.ooms[0].max_batch_after <= 2


class AlwaysOom(torch.nn.Module):
    def forward(self, input_ids: Any, **kw: Any) -> Any:
        raise MemoryError("cannot allocate")


def test_oom_at_batch_one_fails_the_request_instead_of_looping() -> None:
    s = sched(AlwaysOom(), max_batch=4)
    c = Client([1, 2, 3], 4)
    s.submit(c.seq)
    run(s, [c], limit=MAX_OOM_RETRIES + 2)
    assert c.done is not None and c.done.kind == "error" and "out of memory" in c.done.message
    assert s.counters.oom_total == MAX_OOM_RETRIES and s.counters.requests_failed == 1


def test_cancelled_request_leaves_the_batch(model: Any, expected: dict[int, list[int]]) -> None:
    s = sched(model, max_batch=4)
    a, b = Client(PROMPTS[0], 12), Client(PROMPTS[1], 12)
    s.submit(a.seq)
    s.submit(b.seq)
    for _ in range(3):
        s.step()
    b.seq.cancel()
    s.step()
    assert len(s.batch) == 1 and s.batch.rows[0] is a.seq
    run(s, [a])
    check([a], expected, [0], [12])
    assert b.done is None and len(b.tokens) == 4


def test_seeded_sampling_is_reproducible(model: Any) -> None:
    outs = []
    for _ in range(2):
        s = sched(model, max_batch=2)
        c = Client(PROMPTS[0], 10, temperature=0.9, top_p=0.95, seed=1234)
        s.submit(c.seq)
        run(s, [c])
        outs.append(c.tokens)
    assert outs[0] == outs[1] and len(outs[0]) == 10
