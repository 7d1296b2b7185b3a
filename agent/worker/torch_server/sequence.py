"""One request as the scheduler sees it: prompt ids, sampling settings, the tokens generated so far, and the text
handed to the client. Text is produced here, in the scheduler thread, so that stop strings end a sequence at the
same token boundary the client sees.

A sequence can leave the running batch before it is finished (out-of-memory, a lowered max batch or KV budget) and
join again later: it keeps its generated tokens and is prefilled again over prompt + generated, so the client
never sees a token twice and greedy decoding continues where it stopped.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "error"]

_ids = itertools.count(1)


@dataclass(frozen=True)
class Event:
    """What the scheduler tells a request's handler: new text (possibly empty) with its token ids, or the end."""

    kind: Literal["delta", "done", "error"]
    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    message: str = ""


Sink = Callable[[Event], None]


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(eq=False)
class Seq:
    prompt_ids: list[int]
    params: SamplingParams
    sink: Sink
    decode: Callable[[Sequence[int]], str]
    eos_ids: frozenset[int]
    id: int = field(default_factory=lambda: next(_ids))
    generated: list[int] = field(default_factory=list)
    text: str = ""                  # the full text decoded so far (may hold back a partial stop string)
    sent: int = 0                   # characters of `text` already handed to the client
    finished: FinishReason | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    oom_count: int = 0
    requeues: int = 0
    generator: Any = None           # torch.Generator for sampled requests (created by the scheduler)
    stream: bool = True             # False: one delta at the end (no per-token events, no per-token decode)

    @property
    def reserve(self) -> int:
        """KV tokens this sequence may grow to: what the budget reserves at admission."""
        return len(self.prompt_ids) + self.params.max_tokens

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.generated)

    def context_ids(self) -> list[int]:
        """Ids to prefill when (re)joining: the prompt and every token generated so far."""
        return self.prompt_ids + self.generated

    def cancel(self) -> None:
        self.cancelled.set()

    def push(self, token: int) -> bool:
        """Record one generated token and send the text it completes. True when the sequence is now finished."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        is_eos = token in self.eos_ids and not self.params.ignore_eos
        if is_eos:
            self.generated.append(token)
            self._finish("stop", new_ids=(token,))
            return True
        self.generated.append(token)
        if not self.stream and not self.params.stop:
            return self._maybe_length()   # nobody reads partial text: decode once at the end
        full = self.decode(self.generated)
        # a trailing U+FFFD is an incomplete UTF-8 character: hold it until the token that completes it
        stable = full.rstrip("\ufffd")
        self.text = full
        for s in self.params.stop:
            at = stable.find(s, max(0, self.sent - len(s)))
            if at >= 0:
                self.text = stable[:at]
                self._finish("stop", new_ids=(token,))
                return True
        self._send(len(stable) - _held_back(stable, self.params.stop), (token,))
        return self._maybe_length()

    def _maybe_length(self) -> bool:
        if len(self.generated) >= self.params.max_tokens:
            self._finish("length", new_ids=())
            return True
        return False

    def _send(self, upto: int, ids: tuple[int, ...]) -> None:
        if not self.stream:
            return
        upto = max(upto, self.sent)
        delta = self.text[self.sent:upto]
        self.sent = upto
        self.sink(Event("delta", text=delta, token_ids=ids))

    def _finish(self, reason: FinishReason, new_ids: tuple[int, ...]) -> None:
        if not self.stream:
            if not self.params.stop:
                self.text = self.decode(self.generated[:-1] if new_ids and reason == "stop" else self.generated)
            new_ids = tuple(self.generated)
        # everything not yet sent goes out now (a held-back stop prefix that never completed is text after all)
        delta = self.text[self.sent:].replace("\ufffd", "")
        self.sent = len(self.text)
        if delta or new_ids:
            self.sink(Event("delta", text=delta, token_ids=new_ids))
        self.finished = reason
        self.sink(Event("done", finish_reason=reason, prompt_tokens=len(self.prompt_ids),
                        completion_tokens=len(self.generated)))

    def fail(self, message: str) -> None:
        self.finished = "error"
        self.sink(Event("error", message=message, finish_reason="error", prompt_tokens=len(self.prompt_ids),
                        completion_tokens=len(self.generated)))


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of text that could be the start of a stop string: not sent until decided."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold
