"""Continuous batching: one thread owns the model and runs a loop of

    apply control changes -> preempt what no longer fits -> admit from the queue (one batched prefill) -> decode

so requests join and leave the running batch at token boundaries. Two levers bound the batch and change live:
`max_batch` (rows per decode step) and `kv_budget_tokens` (the sum over running sequences of prompt + max_tokens,
reserved at admission so a running sequence never outgrows the budget). A lowered lever takes effect at the next
step: the newest rows go back to the head of the queue with their progress kept, nothing is dropped. The queue is
FIFO; when the head does not fit it waits (no overtaking, so a large request is not starved), except that an empty
batch always admits one sequence, so a request larger than the whole budget still runs, alone.

Out of memory (torch.cuda.OutOfMemoryError, or MemoryError on the CPU) during a step: every sequence in that step
is requeued at the head with its progress kept (the cache may have been half-extended, so it is rebuilt by a new
prefill), max batch is halved from the rows that failed, and the event is counted, logged and kept for /control.
A sequence that hits out-of-memory MAX_OOM_RETRIES times while running alone is failed with an error rather than
retried forever.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from agent.worker.torch_control import ControlState, OomEvent
from agent.worker.torch_server import kvcache
from agent.worker.torch_server.batch import RunningBatch, prefill_inputs
from agent.worker.torch_server.sequence import Seq

log = logging.getLogger("hosttune.torch")

MAX_OOM_RETRIES = 3
OOM_ERRORS: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError, MemoryError)


class InjectedOOM(MemoryError):
    """Raised by the test switch (POST /control {"inject_oom": N}) in place of a real out-of-memory."""


@dataclass
class Counters:
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    predicted_tokens: int = 0
    predicted_seconds: float = 0.0
    decode_steps: int = 0
    decode_rows: int = 0          # sum over decode steps of the rows in the step
    last_step_rows: int = 0
    requests_finished: int = 0
    requests_failed: int = 0
    requests_requeued: int = 0
    oom_total: int = 0


class Scheduler:
    def __init__(self, model: Any, *, device: torch.device, dtype: torch.dtype, max_batch: int = 8,
                 kv_budget_tokens: int | None = None, model_name: str = "model", inject_oom: int = 0) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.model_name = model_name
        self._cond = threading.Condition()
        self._queue: collections.deque[Seq] = collections.deque()
        self._max_batch = max_batch
        self._kv_budget = kv_budget_tokens
        self._inject_oom = inject_oom
        self._stop = False
        self._thread: threading.Thread | None = None
        self.batch = RunningBatch()
        self.counters = Counters()
        self.ooms: collections.deque[OomEvent] = collections.deque(maxlen=10)
        self.error: BaseException | None = None
        self.running = 0                  # published after each step (read by /control and /metrics)
        self.kv_used = 0
        self.kv_reserved = 0
        self.kv_padded = 0

    # ----- called from other threads ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="torch-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, seq: Seq) -> None:
        with self._cond:
            self._queue.append(seq)
            self._cond.notify_all()

    def wake(self) -> None:
        """Let the loop notice a cancelled request even when it is idle waiting."""
        with self._cond:
            self._cond.notify_all()

    def configure(self, fields: dict[str, Any]) -> None:
        """Apply a control update (only the keys given); takes effect at the scheduler's next step."""
        with self._cond:
            if "max_batch" in fields and fields["max_batch"] is not None:
                self._max_batch = int(fields["max_batch"])
            if "kv_budget_tokens" in fields:
                budget = fields["kv_budget_tokens"]
                self._kv_budget = int(budget) if budget is not None else None
            if fields.get("inject_oom"):
                self._inject_oom += int(fields["inject_oom"])
            log.info("control: max_batch=%s kv_budget_tokens=%s inject_oom=%s", self._max_batch, self._kv_budget,
                     self._inject_oom)
            self._cond.notify_all()

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def kv_budget_tokens(self) -> int | None:
        return self._kv_budget

    @property
    def queued(self) -> int:
        return len(self._queue)

    def state(self, dtype_name: str) -> ControlState:
        with self._cond:
            return ControlState(max_batch=self._max_batch, kv_budget_tokens=self._kv_budget, running=self.running,
                                queued=len(self._queue), kv_tokens_used=self.kv_used,
                                kv_tokens_reserved=self.kv_reserved, kv_tokens_padded=self.kv_padded,
                                steps=self.counters.decode_steps, oom_total=self.counters.oom_total,
                                inject_oom_pending=self._inject_oom, last_ooms=list(self.ooms),
                                device=str(self.device), dtype=dtype_name, model=self.model_name)

    # ----- the scheduler thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._cond:
                        while not self._stop and not self._queue and not self.batch.rows:
                            self._cond.wait(1.0)
                        if self._stop:
                            break
                    self.step()
        except BaseException as e:
            log.exception("scheduler thread died")
            self.error = e
        finally:
            for seq in self.batch.clear() + list(self._queue):
                if seq.finished is None:
                    seq.fail("worker shutting down")

    def step(self) -> None:
        """One iteration: drop cancelled rows, enforce the levers, admit, decode. Public for in-process tests."""
        with self._cond:
            max_batch, budget = self._max_batch, self._kv_budget
            cancelled = [s for s in self._queue if s.cancelled.is_set()]
            for s in cancelled:
                self._queue.remove(s)
        self.batch.leave([s for s in self.batch.rows if s.cancelled.is_set()])
        self._preempt(max_batch, budget)
        self._admit(max_batch, budget)
        if self.batch.rows:
            self._decode()
        self._publish()

    def _publish(self) -> None:
        b = self.batch
        with self._cond:
            self.running, self.kv_used = len(b), b.used_tokens
            self.kv_reserved, self.kv_padded = b.reserved_tokens, b.padded_tokens

    def _requeue_front(self, seqs: list[Seq]) -> None:
        with self._cond:
            for s in reversed(seqs):
                s.requeues += 1
                self._queue.appendleft(s)
        self.counters.requests_requeued += len(seqs)

    def _preempt(self, max_batch: int, budget: int | None) -> None:
        rows = self.batch.rows
        keep = len(rows)
        while keep > 1 and (keep > max_batch or
                            (budget is not None and sum(s.reserve for s in rows[:keep]) > budget)):
            keep -= 1
        if keep < len(rows):
            out = rows[keep:]
            log.info("lever lowered: %d of %d running sequences back to the queue (max_batch=%d, budget=%s)",
                     len(out), len(rows), max_batch, budget)
            self.batch.leave(out)
            self._requeue_front(out)

    def _fits(self, seq: Seq, pending: list[Seq], max_batch: int, budget: int | None) -> bool:
        rows = len(self.batch) + len(pending)
        if rows == 0:
            return True  # an empty batch takes anything, or a request larger than the budget would never run
        if rows >= max_batch:
            return False
        reserved = self.batch.reserved_tokens + sum(s.reserve for s in pending)
        return budget is None or reserved + seq.reserve <= budget

    def _admit(self, max_batch: int, budget: int | None) -> None:
        """Take every queued sequence that fits (in order) and prefill them in one forward pass."""
        pending: list[Seq] = []
        with self._cond:
            while self._queue and self._fits(self._queue[0], pending, max_batch, budget):
                seq = self._queue.popleft()
                if not seq.cancelled.is_set() and seq.finished is None:
                    pending.append(seq)
        if pending:
            self._prefill(pending)

    def _prefill(self, seqs: list[Seq]) -> None:
        contexts = [s.context_ids() for s in seqs]
        t0 = time.perf_counter()
        try:
            inputs, pads = prefill_inputs(contexts, self.device, self.dtype)
            logits, cache = kvcache.forward(self.model, inputs.input_ids, kvcache.build_cache([]),
                                            inputs.attention_mask, inputs.position_ids)
            tokens = self._sample(logits, seqs)
        except OOM_ERRORS as e:
            self._on_oom("prefill", seqs, e)
            return
        self.counters.prompt_tokens += sum(len(c) for c in contexts)
        self.counters.prompt_seconds += time.perf_counter() - t0
        self.counters.predicted_tokens += len(seqs)
        keep = []
        for i, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            if seq.push(token):
                self._finished(seq)
            else:
                keep.append(i)
        if not keep:
            return
        kv = kvcache.cache_layers(cache)
        if len(keep) < len(seqs):
            index = torch.tensor(keep, dtype=torch.long, device=kv[0][0].device)
            kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in kv]
        self.batch.join([seqs[i] for i in keep], kv, [pads[i] for i in keep])

    def _decode(self) -> None:
        rows = list(self.batch.rows)
        t0 = time.perf_counter()
        try:
            inputs = self.batch.step_inputs(self.device, self.dtype)
            logits, cache = kvcache.forward(self.model, inputs.input_ids, self.batch.cache, inputs.attention_mask,
                                            inputs.position_ids)
            with self._cond:
                inject = self._inject_oom > 0
                if inject:
                    self._inject_oom -= 1
            if inject:
                raise InjectedOOM("injected out-of-memory (test switch)")
            tokens = self._sample(logits, rows)
        except OOM_ERRORS as e:
            self._on_oom("decode", rows, e)
            return
        self.batch.cache = cache
        self.batch.stepped()
        c = self.counters
        c.decode_steps += 1
        c.decode_rows += len(rows)
        c.last_step_rows = len(rows)
        c.predicted_tokens += len(rows)
        c.predicted_seconds += time.perf_counter() - t0
        done = [seq for seq, token in zip(rows, tokens, strict=True) if seq.push(token)]
        for seq in done:
            self._finished(seq)
        self.batch.leave(done)

    def _finished(self, seq: Seq) -> None:
        self.counters.requests_finished += 1

    def _sample(self, logits: torch.Tensor, rows: list[Seq]) -> list[int]:
        picks = logits.argmax(dim=-1)
        out = [int(t) for t in picks.tolist()]
        for i, seq in enumerate(rows):
            p = seq.params
            if p.temperature <= 0:
                continue
            if seq.generator is None:
                seq.generator = torch.Generator(device=logits.device)
                seq.generator.manual_seed(p.seed if p.seed is not None else int(time.time_ns() & 0xFFFFFFFF))
            probs = torch.softmax(logits[i].float() / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                keep = sorted_p.cumsum(-1) - sorted_p < p.top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
            out[i] = int(torch.multinomial(probs, 1, generator=seq.generator))
        return out

    def _on_oom(self, phase: str, rows: list[Seq], error: BaseException) -> None:
        injected = isinstance(error, InjectedOOM)
        if phase == "decode":
            self.batch.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        with self._cond:
            before = self._max_batch
            self._max_batch = max(1, min(before, len(rows)) // 2)
            after = self._max_batch
        failed: list[Seq] = []
        retry: list[Seq] = []
        for seq in rows:
            seq.oom_count += 1
            if len(rows) == 1 and seq.oom_count >= MAX_OOM_RETRIES:
                failed.append(seq)
            else:
                retry.append(seq)
        self._requeue_front(retry)
        for seq in failed:
            self.counters.requests_failed += 1
            seq.fail(f"out of memory {seq.oom_count} times, the last one at batch size 1: {error}")
        self.counters.oom_total += 1
        event = OomEvent(at=time.time(), step=self.counters.decode_steps, phase=phase, rows=len(rows),
                         max_batch_before=before, max_batch_after=after, requeued=len(retry), failed=len(failed),
                         injected=injected, error=f"{type(error).__name__}: {error}"[:300])
        self.ooms.append(event)
        log.warning("out of memory during %s with %d rows%s: max batch %d -> %d, %d requests requeued, %d failed",
                    phase, len(rows), " (injected)" if injected else "", before, after, len(retry), len(failed))
