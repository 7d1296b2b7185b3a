"""Prometheus /metrics of the torch worker: llama-server's figures with the same meaning under a `torch:` prefix
(prompt_tokens_total, tokens_predicted_total, requests_processing, requests_deferred, n_decode_total,
n_busy_slots_per_decode), plus what only this worker has: the KV-cache tokens against the live budget, the live
max batch, the rows of the last decode step, and out-of-memory and requeue counts."""

from __future__ import annotations

from agent.metrics.prom import MetricFamily, counter, format_families, gauge
from agent.worker.torch_control import METRIC_PREFIX
from agent.worker.torch_server.scheduler import Scheduler


def render(s: Scheduler) -> str:
    c = s.counters
    p = METRIC_PREFIX
    budget = s.kv_budget_tokens
    fams: list[MetricFamily] = [
        counter(p + "prompt_tokens_total", "Prompt tokens processed (prefill; a requeued request counts again).",
                c.prompt_tokens),
        counter(p + "prompt_seconds_total", "Prompt processing time.", round(c.prompt_seconds, 6)),
        counter(p + "tokens_predicted_total", "Generation tokens produced.", c.predicted_tokens),
        counter(p + "tokens_predicted_seconds_total", "Time spent in decode steps.", round(c.predicted_seconds, 6)),
        counter(p + "n_decode_total", "Decode steps (one forward pass over the running batch each).",
                c.decode_steps),
        counter(p + "decode_rows_total", "Sum over decode steps of the sequences in the step.", c.decode_rows),
        gauge(p + "n_busy_slots_per_decode", "Average sequences per decode step since start.",
              c.decode_rows / c.decode_steps if c.decode_steps else 0),
        gauge(p + "batch_size", "Sequences in the last decode step.", c.last_step_rows),
        gauge(p + "requests_processing", "Requests in the running batch.", s.running),
        gauge(p + "requests_deferred", "Requests waiting in the queue.", s.queued),
        gauge(p + "max_batch", "Live max batch (POST /control).", s.max_batch),
        gauge(p + "kv_cache_tokens", "Prompt + generated tokens of the running sequences.", s.kv_used),
        gauge(p + "kv_cache_reserved_tokens", "Prompt + max_tokens of the running sequences (what the budget caps).",
              s.kv_reserved),
        gauge(p + "kv_cache_padded_tokens", "Rows x columns of the batched cache, padding included.", s.kv_padded),
        gauge(p + "kv_cache_budget_tokens", "Live KV budget in tokens (absent: no budget).", budget),
        gauge(p + "kv_cache_usage_ratio", "kv_cache_tokens / kv_cache_budget_tokens (absent: no budget).",
              s.kv_used / budget if budget else None),
        counter(p + "requests_finished_total", "Requests completed.", c.requests_finished),
        counter(p + "requests_failed_total", "Requests failed (out of memory even alone).", c.requests_failed),
        counter(p + "requests_requeued_total", "Running requests sent back to the queue (OOM or a lowered lever).",
                c.requests_requeued),
        counter(p + "oom_total", "Out-of-memory events caught during a step.", c.oom_total),
    ]
    return format_families(fams)
