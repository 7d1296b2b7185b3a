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

# cache type -> (values per block, bytes per block), from ggml's type traits.
CACHE_TYPES: dict[str, tuple[int, int]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "iq4_nl": (32, 18),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
}
HUGEPAGE_2M = 2 * 1024 * 1024
SEED_WEIGHT_FACTOR = 1.5
CTX_GRANULE = 256  # llama.cpp pads each slot's context to a multiple of 256
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
    kv_bytes_per_token: dict[str, int] = Field(description="per cache type, K and V of the same type")
    kv_bytes_per_token_selected: int
    max_tokens: dict[str, int] = Field(description="total context that fits, per cache type")
    options: list[FitOption]
    recommended: FitOption | None
    requested: FitCheck | None = None
    hugepages_2m: int = Field(description="2 MiB pages that would back the weights")
    notes: list[str] = Field(default_factory=list)


def check_cache_type(value: str, field: str) -> str:
    if value not in CACHE_TYPES:
        raise InputError(f"unknown cache type {value!r} (one of {', '.join(CACHE_TYPES)})", field=field)
    return value


def row_bytes(cache_type: str, n_values: int) -> int:
    """Bytes ggml uses to store a row of n_values in cache_type (whole blocks)."""
    per_block, block_bytes = CACHE_TYPES[cache_type]
    return -(-n_values // per_block) * block_bytes


def kv_bytes_per_token(info: GgufInfo, cache_type_k: str = "f16", cache_type_v: str = "f16") -> int:
    """K and V bytes one token occupies across all layers."""
    return sum(row_bytes(cache_type_k, n_kv * info.head_dim_k) + row_bytes(cache_type_v, n_kv * info.head_dim_v)
               for n_kv in info.n_head_kv_per_layer if n_kv > 0)


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


def _option(info: GgufInfo, device: FitDevice, parallel: int, ctx_per_slot: int, per_token: int) -> FitOption:
    ctx_total = ctx_per_slot * parallel
    kv = ctx_total * per_token
    return FitOption(parallel=parallel, ctx_per_slot=ctx_per_slot, ctx_total=ctx_total, kv_bytes=kv,
                     total_bytes=info.weight_bytes + overhead_bytes(info, device, parallel) + kv)


def plan_fit(info: GgufInfo, device: FitDevice, *, headroom_pct: float = 10.0, ctx: int | None = None,
             parallel: int | None = None, cache_type_k: str = "f16", cache_type_v: str = "f16",
             max_ctx_per_slot: int = DEFAULT_MAX_CTX_PER_SLOT) -> FitReport:
    """Size the model against the device. ctx is the total context (-c), as llama-server takes it."""
    check_cache_type(cache_type_k, "cache_type_k")
    check_cache_type(cache_type_v, "cache_type_v")
    notes: list[str] = []
    budget = int(device.free_bytes * (1 - headroom_pct / 100))
    per_token = {t: kv_bytes_per_token(info, t, t) for t in CACHE_TYPES}
    selected = kv_bytes_per_token(info, cache_type_k, cache_type_v)
    slots_for_overhead = parallel or DEFAULT_PARALLEL
    overhead = overhead_bytes(info, device, slots_for_overhead)
    kv_budget = max(0, budget - info.weight_bytes - overhead)
    max_tokens = {t: kv_budget // b for t, b in per_token.items() if b > 0}
    slot_cap = min(info.context_length or max_ctx_per_slot, max_ctx_per_slot)

    options: list[FitOption] = []
    tokens = kv_budget // selected if selected else 0
    for p in PARALLEL_CHOICES:
        per_slot = min(slot_cap, (tokens // p) // CTX_GRANULE * CTX_GRANULE)
        if per_slot < CTX_GRANULE:
            break
        options.append(_option(info, device, p, per_slot, selected))

    recommended: FitOption | None = None
    want_slot = min(slot_cap, MIN_USEFUL_CTX_PER_SLOT)
    if parallel is not None:
        recommended = next((o for o in options if o.parallel == parallel), None)
        if recommended is None and ctx is None:
            per_slot = min(slot_cap, (tokens // parallel) // CTX_GRANULE * CTX_GRANULE)
            if per_slot >= CTX_GRANULE:
                recommended = _option(info, device, parallel, per_slot, selected)
    else:
        good = [o for o in options if o.parallel <= DEFAULT_PARALLEL and o.ctx_per_slot >= want_slot]
        recommended = good[-1] if good else (options[0] if options else None)

    requested: FitCheck | None = None
    if ctx is not None:
        p = parallel or 1
        kv = ctx * selected
        total = info.weight_bytes + overhead_bytes(info, device, p) + kv
        requested = FitCheck(ctx_total=ctx, parallel=p, kv_bytes=kv, total_bytes=total, fits=total <= budget)
        if not requested.fits:
            notes.append(f"ctx {ctx} x parallel {p} needs {total} bytes; the budget is {budget}")

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
        requested=requested, hugepages_2m=math.ceil(info.weight_bytes / HUGEPAGE_2M), notes=notes,
    )
