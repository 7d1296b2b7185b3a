"""Context memory of a llama.cpp worker, computed as llama.cpp allocates it (KV caches and recurrent state).

llama.cpp (the build bundled with llama-cpp-python 0.3.36) sizes the context memory like this:
- the total context -c is padded to 256; with -np N slots and no unified KV cache each slot (one "stream") gets
  n_ctx_seq = pad256(c / N) cells, so the context really allocated is N x n_ctx_seq;
- full-attention layers keep a K and a V row of n_head_kv x head_dim values per cell, in the cache type's
  block format (q8_0 = 34 bytes per 32 values);
- sliding-window layers keep their own cache of pad256(min(n_ctx_seq, window x (N if unified else 1) +
  ubatch)) cells per stream (llama_kv_cache_iswa), or n_ctx_seq cells with --swa-full;
- recurrent layers keep max(1, N) rows of R and S values in f32 (llama_memory_recurrent), whatever -c is.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

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
CTX_GRANULE = 256  # llama.cpp pads the context, each slot's context and the SWA cache to a multiple of 256
DEFAULT_UBATCH = 512
STATE_BYTES = 4  # recurrent R and S rows are f32


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MemoryPart(Model):
    kind: str = Field(description="full (attention KV), swa (sliding-window KV) or recurrent (state)")
    layers: int
    cells: int = Field(description="KV cells per stream, or state rows for recurrent memory")
    streams: int = Field(description="separate caches: one per slot unless the KV cache is unified")
    bytes: int


class ContextMemory(Model):
    layout: str
    n_ctx: int = Field(description="the context llama.cpp allocates: -c padded, a multiple of the slots")
    n_ctx_seq: int = Field(description="context per slot")
    parallel: int
    parts: list[MemoryPart]
    bytes: int = Field(description="all KV caches and recurrent state")


def pad(value: int, granule: int = CTX_GRANULE) -> int:
    return -(-value // granule) * granule


def row_bytes(cache_type: str, n_values: int) -> int:
    """Bytes ggml uses to store a row of n_values in cache_type (whole blocks)."""
    per_block, block_bytes = CACHE_TYPES[cache_type]
    return -(-n_values // per_block) * block_bytes


def _layer_bytes(info: GgufInfo, layers: list[int], cache_type_k: str, cache_type_v: str) -> int:
    """K and V bytes of one cell summed over `layers`."""
    return sum(row_bytes(cache_type_k, info.n_head_kv_per_layer[il] * info.head_dim_k)
               + row_bytes(cache_type_v, info.n_head_kv_per_layer[il] * info.head_dim_v) for il in layers)


def layer_kinds(info: GgufInfo) -> dict[str, list[int]]:
    """Layer indexes per kind of memory; attention layers without KV heads keep nothing."""
    lay = info.layout
    kinds: dict[str, list[int]] = {"full": [], "swa": [], "recurrent": []}
    for il in range(info.n_layer):
        if lay.recurrent_layers and lay.recurrent_layers[il]:
            kinds["recurrent"].append(il)
        elif info.n_head_kv_per_layer[il] > 0:
            kinds["swa" if lay.swa_layers and lay.swa_layers[il] else "full"].append(il)
    return kinds


def full_bytes_per_token(info: GgufInfo, cache_type_k: str = "f16", cache_type_v: str = "f16",
                         swa_full: bool = False) -> int:
    """K and V bytes one token of context costs: the layers whose cache grows with -c."""
    kinds = layer_kinds(info)
    layers = kinds["full"] + (kinds["swa"] if swa_full else [])
    return _layer_bytes(info, layers, cache_type_k, cache_type_v)


def context_memory(info: GgufInfo, ctx: int, parallel: int = 1, cache_type_k: str = "f16",
                   cache_type_v: str = "f16", *, ubatch: int = DEFAULT_UBATCH, swa_full: bool = False,
                   unified: bool = False) -> ContextMemory:
    """KV and state bytes llama.cpp allocates for -c ctx -np parallel (-ctk/-ctv, -ub, --swa-full, -kvu)."""
    parallel = max(1, parallel)
    n_ctx = pad(max(ctx, 1))
    if unified or parallel == 1:
        n_ctx_seq, streams = n_ctx, 1
    else:
        n_ctx_seq, streams = pad(n_ctx // parallel), parallel
        n_ctx = n_ctx_seq * parallel
    kinds = layer_kinds(info)
    parts: list[MemoryPart] = []
    if kinds["full"]:
        per_cell = _layer_bytes(info, kinds["full"], cache_type_k, cache_type_v)
        parts.append(MemoryPart(kind="full", layers=len(kinds["full"]), cells=n_ctx_seq, streams=streams,
                                bytes=per_cell * n_ctx_seq * streams))
    if kinds["swa"]:
        window = info.layout.sliding_window * (parallel if unified else 1)
        cells = n_ctx_seq if swa_full else pad(min(n_ctx_seq, window + ubatch))
        per_cell = _layer_bytes(info, kinds["swa"], cache_type_k, cache_type_v)
        parts.append(MemoryPart(kind="swa", layers=len(kinds["swa"]), cells=cells, streams=streams,
                                bytes=per_cell * cells * streams))
    if kinds["recurrent"]:
        rows = parallel
        per_row = (info.layout.state_r_per_seq + info.layout.state_s_per_seq) * STATE_BYTES
        parts.append(MemoryPart(kind="recurrent", layers=len(kinds["recurrent"]), cells=rows, streams=1,
                                bytes=per_row * rows * len(kinds["recurrent"])))
    return ContextMemory(layout=info.layout.name, n_ctx=n_ctx, n_ctx_seq=n_ctx_seq, parallel=parallel, parts=parts,
                         bytes=sum(p.bytes for p in parts))
