"""Memory-fit advisor: what context x parallel a model can serve in a device's free memory, with headroom.

Memory a llama.cpp worker needs = weights (the GGUF tensor data, as stored) + KV cache (bytes per token x total
context; llama-server splits -c across its -np slots) + buffers (logits and compute scratch, estimated). KV bytes
per token follow ggml's storage: each layer keeps one K row of n_head_kv x head_dim_k values and one V row of
n_head_kv x head_dim_v values per token, in the cache type's block format (q8_0 = 34 bytes per 32 values, ...).

The seed rule of thumb is kept as a separate check: a device should hold about 1.5x the weights' bytes.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from agent.errors import InputError
from agent.inspect.models import HostFacts
from agent.worker.gguf_meta import GgufInfo
from agent.worker.kv_memory import (
    CACHE_TYPES,
    CTX_GRANULE,
    DEFAULT_UBATCH,
    ContextMemory,
    context_memory,
    full_bytes_per_token,
)

__all__ = ["CACHE_TYPES", "FitReport", "device_memory", "kv_bytes_per_token", "plan_fit"]

HUGEPAGE_2M = 2 * 1024 * 1024
SEED_WEIGHT_FACTOR = 1.5
MAX_UBATCH = 1 << 16
MAX_PARALLEL = 4096
MAX_TOKENS_CAP = 1 << 26  # a layout whose memory does not grow with context (recurrent) fits "any" context
DEFAULT_MAX_CTX_PER_SLOT = 32768  # beyond this a default wastes memory the controller could give to slots
PARALLEL_CHOICES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_PARALLEL = 4
MIN_USEFUL_CTX_PER_SLOT = 2048
GPU_CONTEXT_OVERHEAD = 512 * 1024 * 1024  # CUDA context + cuBLAS workspace, measured typical
BASE_OVERHEAD = 16 * 1024 * 1024


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FitDevice(Model):
    name: str = Field(description="cpu, cpu:NODE or gpu:INDEX")
    free_bytes: int
    total_bytes: int | None = None


class FitOption(Model):
    parallel: int
    ctx_per_slot: int
    ctx_total: int = Field(description="the -c value: llama-server splits it across -np slots")
    kv_bytes: int
    total_bytes: int = Field(description="weights + buffers + KV")


class FitCheck(Model):
    ctx_total: int
    parallel: int
    kv_bytes: int
    total_bytes: int
    fits: bool


class FitReport(Model):
    model: GgufInfo
    device: FitDevice
    headroom_pct: float
    budget_bytes: int = Field(description="free memory less the headroom")
    weight_bytes: int
    overhead_bytes: int = Field(description="estimated logits/compute buffers (and GPU context)")
    kv_budget_bytes: int
    seed_rule_ok: bool = Field(description=f"free memory >= {SEED_WEIGHT_FACTOR}x the weights' bytes")
    cache_type_k: str
    cache_type_v: str
    kv_bytes_per_token: dict[str, int] = Field(description="per cache type, K and V of the same type: what one "
                                                           "more token of context costs (full-attention layers)")
    kv_bytes_per_token_selected: int
    max_tokens: dict[str, int] = Field(description="total context that fits, per cache type")
    options: list[FitOption]
    recommended: FitOption | None
    requested: FitCheck | None = None
    layout: str = Field("full", description="full, swa, recurrent, hybrid or hybrid-swa (per-layer memory kinds)")
    context_memory: ContextMemory | None = Field(
        None, description="KV and state memory of the requested (else recommended) -c/-np, per layer kind, as "
                          "llama.cpp allocates it")
    hugepages_2m: int = Field(description="2 MiB pages that would back the weights")
    notes: list[str] = Field(default_factory=list)


def check_cache_type(value: str, field: str) -> str:
    if value not in CACHE_TYPES:
        raise InputError(f"unknown cache type {value!r} (one of {', '.join(CACHE_TYPES)})", field=field)
    return value


def kv_bytes_per_token(info: GgufInfo, cache_type_k: str = "f16", cache_type_v: str = "f16") -> int:
    """K and V bytes one more token of context costs: the full-attention layers (SWA and recurrent layers keep
    a cache that does not grow with the context)."""
    return full_bytes_per_token(info, cache_type_k, cache_type_v)


def overhead_bytes(info: GgufInfo, device: FitDevice, parallel: int, ubatch: int = 512) -> int:
    """Estimated non-KV buffers: logits for one output per slot plus activation scratch for a micro-batch."""
    vocab = info.vocab_size or 0
    est = BASE_OVERHEAD + vocab * 4 * parallel + ubatch * info.n_embd * 4 * 8
    if device.name.startswith("gpu"):
        est += GPU_CONTEXT_OVERHEAD
    return est


def device_memory(facts: HostFacts, device: str) -> FitDevice:
    """Free memory of `cpu` (MemAvailable), `cpu:NODE` (that NUMA node's free memory) or `gpu:INDEX`."""
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        avail = facts.memory.available_bytes
        return FitDevice(name="cpu", free_bytes=avail if avail is not None else facts.memory.free_bytes,
                         total_bytes=facts.memory.total_bytes)
    if not index.isdigit():
        raise InputError(f"device must be cpu, cpu:NODE or gpu:INDEX, not {device!r}", field="--device")
    n = int(index)
    if kind == "cpu":
        node = next((nd for nd in facts.cpu.numa_nodes if nd.id == n), None)
        if node is None or node.memory_free_bytes is None:
            raise InputError(f"no NUMA node {n} with memory on this host", field="--device")
        return FitDevice(name=device, free_bytes=node.memory_free_bytes, total_bytes=node.memory_total_bytes)
    if kind == "gpu":
        gpu = next((g for g in facts.gpus if g.index == n), None)
        if gpu is None:
            raise InputError(f"no GPU {n} on this host ({len(facts.gpus)} GPUs)", field="--device")
        free = gpu.memory_free_bytes
        if free is None and gpu.memory_total_bytes is not None:
            free = gpu.memory_total_bytes - (gpu.memory_used_bytes or 0)
        if free is None:
            raise InputError(f"GPU {n} reports no memory size", field="--device")
        return FitDevice(name=device, free_bytes=free, total_bytes=gpu.memory_total_bytes)
    raise InputError(f"device must be cpu, cpu:NODE or gpu:INDEX, not {device!r}", field="--device")


class _Sizing:
    """One model + cache types + engine options: context memory of any -c/-np, and the largest -c that fits."""

    def __init__(self, info: GgufInfo, cache_type_k: str, cache_type_v: str, ubatch: int, swa_full: bool) -> None:
        self.info, self.k, self.v, self.ubatch, self.swa_full = info, cache_type_k, cache_type_v, ubatch, swa_full

    def memory(self, ctx: int, parallel: int) -> ContextMemory:
        return context_memory(self.info, ctx, parallel, self.k, self.v, ubatch=self.ubatch, swa_full=self.swa_full)

    def max_per_slot(self, budget: int, parallel: int, cap: int) -> int:
        """The largest context per slot (a multiple of 256, at most cap) whose memory fits budget; 0 if none."""
        lo, hi = 0, cap // CTX_GRANULE  # in granules; memory grows with the context
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.memory(mid * CTX_GRANULE * parallel, parallel).bytes <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo * CTX_GRANULE


def _option(info: GgufInfo, device: FitDevice, sizing: _Sizing, parallel: int, ctx_per_slot: int) -> FitOption:
    ctx_total = ctx_per_slot * parallel
    kv = sizing.memory(ctx_total, parallel).bytes
    return FitOption(parallel=parallel, ctx_per_slot=ctx_per_slot, ctx_total=ctx_total, kv_bytes=kv,
                     total_bytes=info.weight_bytes + overhead_bytes(info, device, parallel) + kv)


def plan_fit(info: GgufInfo, device: FitDevice, *, headroom_pct: float = 10.0, ctx: int | None = None,
             parallel: int | None = None, cache_type_k: str = "f16", cache_type_v: str = "f16",
             max_ctx_per_slot: int = DEFAULT_MAX_CTX_PER_SLOT, ubatch: int = DEFAULT_UBATCH,
             swa_full: bool = False) -> FitReport:
    """Size the model against the device. ctx is the total context (-c), as llama-server takes it."""
    check_cache_type(cache_type_k, "cache_type_k")
    check_cache_type(cache_type_v, "cache_type_v")
    if not 1 <= ubatch <= MAX_UBATCH:
        raise InputError(f"ubatch must be 1..{MAX_UBATCH}, not {ubatch}", field="ubatch")
    if parallel is not None and not 1 <= parallel <= MAX_PARALLEL:
        raise InputError(f"parallel must be 1..{MAX_PARALLEL}, not {parallel}", field="parallel")
    if ctx is not None and not 1 <= ctx <= MAX_TOKENS_CAP:
        raise InputError(f"ctx must be 1..{MAX_TOKENS_CAP}, not {ctx}", field="ctx")
    notes: list[str] = []
    budget = int(device.free_bytes * (1 - headroom_pct / 100))
    per_token = {t: kv_bytes_per_token(info, t, t) for t in CACHE_TYPES}
    selected = kv_bytes_per_token(info, cache_type_k, cache_type_v)
    sizing = _Sizing(info, cache_type_k, cache_type_v, ubatch, swa_full)
    slots_for_overhead = parallel or DEFAULT_PARALLEL
    overhead = overhead_bytes(info, device, slots_for_overhead)
    kv_budget = max(0, budget - info.weight_bytes - overhead)
    max_tokens = {t: _Sizing(info, t, t, ubatch, swa_full).max_per_slot(kv_budget, 1, MAX_TOKENS_CAP)
                  for t in CACHE_TYPES}
    slot_cap = min(info.context_length or max_ctx_per_slot, max_ctx_per_slot)

    options: list[FitOption] = []
    for p in PARALLEL_CHOICES:
        per_slot = sizing.max_per_slot(kv_budget, p, slot_cap)
        if per_slot < CTX_GRANULE:
            break
        options.append(_option(info, device, sizing, p, per_slot))

    recommended: FitOption | None = None
    want_slot = min(slot_cap, MIN_USEFUL_CTX_PER_SLOT)
    if parallel is not None:
        recommended = next((o for o in options if o.parallel == parallel), None)
        if recommended is None and ctx is None:
            per_slot = sizing.max_per_slot(kv_budget, parallel, slot_cap)
            if per_slot >= CTX_GRANULE:
                recommended = _option(info, device, sizing, parallel, per_slot)
    else:
        good = [o for o in options if o.parallel <= DEFAULT_PARALLEL and o.ctx_per_slot >= want_slot]
        recommended = good[-1] if good else (options[0] if options else None)

    requested: FitCheck | None = None
    memory: ContextMemory | None = None
    if ctx is not None:
        p = parallel or 1
        memory = sizing.memory(ctx, p)
        total = info.weight_bytes + overhead_bytes(info, device, p) + memory.bytes
        requested = FitCheck(ctx_total=ctx, parallel=p, kv_bytes=memory.bytes, total_bytes=total,
                             fits=total <= budget)
        if not requested.fits:
            notes.append(f"ctx {ctx} x parallel {p} needs {total} bytes; the budget is {budget}")
    elif recommended is not None:
        memory = sizing.memory(recommended.ctx_total, recommended.parallel)

    seed_ok = device.free_bytes >= SEED_WEIGHT_FACTOR * info.weight_bytes
    if not seed_ok:
        notes.append(f"free memory holds less than {SEED_WEIGHT_FACTOR}x the weights: expect to offload fewer "
                     "layers or run out of memory under load")
    if not options:
        notes.append("not even one slot of 256 tokens fits next to the weights")
    return FitReport(
        model=info, device=device, headroom_pct=headroom_pct, budget_bytes=budget,
        weight_bytes=info.weight_bytes, overhead_bytes=overhead, kv_budget_bytes=kv_budget, seed_rule_ok=seed_ok,
        cache_type_k=cache_type_k, cache_type_v=cache_type_v, kv_bytes_per_token=per_token,
        kv_bytes_per_token_selected=selected, max_tokens=max_tokens, options=options, recommended=recommended,
        requested=requested, layout=info.layout.name, context_memory=memory,
        hugepages_2m=math.ceil(info.weight_bytes / HUGEPAGE_2M), notes=notes,
    )
