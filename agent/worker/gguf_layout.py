"""Which kind of memory each layer of a GGUF model keeps, read as llama.cpp reads it.

llama.cpp keeps three kinds of per-layer memory:
- full attention: a K and V row per token of context (the plain layout);
- sliding-window attention (SWA): the same rows, but a small cache of about window + micro-batch cells per
  sequence (Gemma 2/3, Cohere 2, Llama 4, ...); which layers slide comes from
  `<arch>.attention.sliding_window_pattern` (an int period or a per-layer bool array) or the architecture's
  built-in period, as llama.cpp's `load_swa_pattern`;
- recurrent state (Mamba, RWKV, and the recurrent layers of hybrids such as Jamba, Granite 4 or LFM2): a fixed
  R (convolution / token shift) and S (SSM / WKV state) row per sequence, in f32, whatever the context.

The layout is input like the rest of the file: every size is bounded before anything is computed from it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.errors import InputError

# llama.cpp's built-in SWA period per architecture (the `load_swa_pattern(ml, N, dense_first)` calls): used when
# the file has a sliding window but no pattern key. dense_first: layer 0 is the full one of each period.
SWA_PERIOD: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False), "gemma3": (6, False), "gemma-embedding": (6, False), "gemma3n": (5, False),
    "cohere2": (4, False), "llama4": (4, False), "exaone4": (4, False), "olmo2": (4, False),
    "gpt-oss": (2, False), "afmoe": (4, False), "smallthinker": (4, True), "cohere2moe": (4, True),
    "exaone-moe": (4, False), "plamo3": (8, False),
}
# Architectures whose every layer is recurrent, and hybrids whose recurrent layers are those without KV heads.
RECURRENT_ARCHS = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
HYBRID_ARCHS = frozenset({"jamba", "falcon-h1", "granitehybrid", "nemotron_h", "nemotron_h_moe", "plamo2", "lfm2",
                          "lfm2moe"})
RWKV_ARCHS = frozenset({"rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
MAX_SWA = 1 << 26
MAX_STATE_DIM = 1 << 20

LayoutName = Literal["full", "swa", "recurrent", "hybrid", "hybrid-swa"]


class LayerLayout(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: LayoutName = Field("full", description="full attention, sliding-window, recurrent or hybrid")
    sliding_window: int = Field(0, description="tokens an SWA layer attends to (0: none)")
    swa_layers: list[bool] = Field(default_factory=list, description="per layer: attention slides (SWA)")
    recurrent_layers: list[bool] = Field(default_factory=list, description="per layer: recurrent state")
    state_r_per_seq: int = Field(0, description="f32 values of a recurrent layer's R (conv/token-shift) row")
    state_s_per_seq: int = Field(0, description="f32 values of a recurrent layer's S (SSM/WKV) row")


def _bool_list(value: Any, key: str, n_layer: int, path: Path) -> list[bool]:
    if not isinstance(value, list) or len(value) != n_layer:
        raise InputError(f"GGUF metadata {key} must have one entry per layer ({n_layer})", path=path)
    return [bool(v) for v in value]


def read_layout(arch: str, n_layer: int, kv_per_layer: list[int], lookup: Callable[[str], Any],
                bounded: Callable[[Any, str, int], int], path: Path) -> LayerLayout:
    """The layer layout of an `arch` model; lookup(key) returns `<arch>.key`'s value or None."""
    recurrent = [False] * n_layer
    r_dim = s_dim = 0
    if arch in RECURRENT_ARCHS:
        recurrent = [True] * n_layer
    elif arch in HYBRID_ARCHS:
        recurrent = [n == 0 for n in kv_per_layer]
    if any(recurrent):
        r_dim, s_dim = _state_dims(arch, lookup, bounded, path)

    window_raw = lookup("attention.sliding_window")
    window = bounded(window_raw, f"{arch}.attention.sliding_window", MAX_SWA) if window_raw is not None else 0
    swa = [False] * n_layer
    if window > 0:
        pattern = lookup("attention.sliding_window_pattern")
        key = f"{arch}.attention.sliding_window_pattern"
        if isinstance(pattern, list):
            swa = _bool_list(pattern, key, n_layer, path)
        else:
            period, dense_first = SWA_PERIOD.get(arch, (0, False))
            if pattern is not None:
                period = bounded(pattern, key, n_layer)
            # llama.cpp: period 0 means every layer slides
            swa = [period == 0 or (il % period != 0 if dense_first else il % period < period - 1)
                   for il in range(n_layer)]
        swa = [s and not r for s, r in zip(swa, recurrent, strict=True)]
    has_swa = any(swa)
    if all(recurrent):
        name: LayoutName = "recurrent"
    elif any(recurrent):
        name = "hybrid-swa" if has_swa else "hybrid"
    else:
        name = "swa" if has_swa else "full"
    return LayerLayout(name=name, sliding_window=window if has_swa else 0, swa_layers=swa,
                       recurrent_layers=recurrent, state_r_per_seq=r_dim, state_s_per_seq=s_dim)


def _state_dims(arch: str, lookup: Callable[[str], Any], bounded: Callable[[Any, str, int], int],
                path: Path) -> tuple[int, int]:
    """Values per sequence of one recurrent layer's R and S rows (llama_hparams::n_embd_r / n_embd_s)."""
    def need(key: str, default: int | None = None) -> int:
        value = lookup(key)
        if value is None:
            if default is None:
                raise InputError(f"GGUF metadata lacks {arch}.{key} (a recurrent model's state size)", path=path)
            return default
        return bounded(value, f"{arch}.{key}", MAX_STATE_DIM)

    n_embd = need("embedding_length")
    if arch in RWKV_ARCHS:
        head_size = need("wkv.head_size")
        return need("token_shift_count", 2) * n_embd, n_embd * head_size
    if arch in ("lfm2", "lfm2moe"):
        return n_embd * max(0, need("shortconv.l_cache") - 1), 0
    d_conv = need("ssm.conv_kernel")
    d_inner = need("ssm.inner_size")
    d_state = need("ssm.state_size")
    n_group = need("ssm.group_count", 0)
    return max(0, d_conv - 1) * (d_inner + 2 * n_group * d_state), d_state * d_inner
