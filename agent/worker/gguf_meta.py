"""Read the few GGUF metadata fields that decide memory use: sizes of the weights and the attention shape.

We read with the `gguf` package's GGUFReader (a memory map; nothing is loaded), so a 70B model is inspected in
milliseconds. Architecture keys are prefixed with the architecture name (`llama.block_count`, `qwen2.block_count`),
which is why every lookup goes through `_arch_key`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.errors import InputError
from agent.worker.gguf_layout import RECURRENT_ARCHS, LayerLayout, read_layout

# A model file is input like any other: sizes no real model has are refused before anything is built from them
# (block_count = 2**33 made the per-layer list below 64 GiB). The largest real models are far inside these.
MAX_LAYERS = 1 << 14
MAX_HEADS = 1 << 14
MAX_DIM = 1 << 20  # embedding length, key/value head dimension
MAX_CONTEXT = 1 << 26
MAX_VOCAB = 1 << 24


class GgufInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    file_bytes: int
    architecture: str
    name: str | None = None
    file_type: int | None = Field(None, description="general.file_type (llama_ftype)")
    parameter_count: int = Field(description="sum of the tensors' element counts")
    weight_bytes: int = Field(description="sum of the tensors' data bytes as stored (quantized)")
    tensor_count: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int = Field(description="KV heads per layer (GQA); the maximum when it varies by layer")
    n_head_kv_per_layer: list[int] = Field(description="KV heads of each layer (0 for layers without KV)")
    head_dim_k: int
    head_dim_v: int
    context_length: int | None = Field(None, description="training context length")
    vocab_size: int | None = None
    layout: LayerLayout = Field(default_factory=LayerLayout, description="full / SWA / recurrent layers")


def _value(field: Any) -> Any:
    """A field's decoded value (scalar, string or list)."""
    return field.contents()


def _arch_key(fields: dict[str, Any], arch: str, key: str) -> Any:
    field = fields.get(f"{arch}.{key}")
    if field is None:
        return None
    if len(field.data) > MAX_LAYERS:  # an array (per-layer values) is decoded into a list: at most one per layer
        raise InputError(f"GGUF metadata {arch}.{key} has {len(field.data)} entries: implausible (at most "
                         f"{MAX_LAYERS})")
    return _value(field)


def _bounded(value: Any, key: str, limit: int, path: Path) -> int:
    """`value` as an int in 0..limit, or InputError naming the key."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"GGUF metadata {key} is not a number: {str(value)[:40]!r}", path=path) from None
    if not 0 <= number <= limit:
        raise InputError(f"GGUF metadata {key} = {number} is implausible (at most {limit})", path=path)
    return number


def read_gguf(path: Path) -> GgufInfo:
    """Metadata of a GGUF file; InputError naming the file when it is not a GGUF model we can size."""
    from gguf import GGUFReader  # imported here: numpy-backed, only the fit/worker commands need it

    try:
        reader = GGUFReader(str(path), "r")
    except FileNotFoundError:
        raise InputError("model file not found", path=path) from None
    except Exception as e:  # the reader raises many kinds on garbage (bad magic, truncation, unknown types)
        raise InputError(f"not a readable GGUF file: {e}", path=path) from None
    fields = reader.fields
    arch_field = fields.get("general.architecture")
    if arch_field is None:
        raise InputError("GGUF file has no general.architecture", path=path)
    arch = str(_value(arch_field))

    def need(key: str) -> Any:
        value = _arch_key(fields, arch, key)
        if value is None:
            raise InputError(f"GGUF metadata lacks {arch}.{key}", path=path)
        return value

    n_layer = _bounded(need("block_count"), f"{arch}.block_count", MAX_LAYERS, path)
    n_embd = _bounded(need("embedding_length"), f"{arch}.embedding_length", MAX_DIM, path)
    heads_key = f"{arch}.attention.head_count"
    n_head_raw = _arch_key(fields, arch, "attention.head_count")
    if n_head_raw is None and arch not in RECURRENT_ARCHS:
        n_head_raw = need("attention.head_count")
    if n_head_raw is None:  # a recurrent model has no attention heads
        n_head_raw = 0
    n_head = max((_bounded(v, heads_key, MAX_HEADS, path) for v in n_head_raw), default=0) \
        if isinstance(n_head_raw, list) else _bounded(n_head_raw, heads_key, MAX_HEADS, path)
    kv_key = f"{arch}.attention.head_count_kv"
    kv_raw = _arch_key(fields, arch, "attention.head_count_kv")
    if kv_raw is None:
        kv_raw, kv_key = n_head_raw, heads_key  # no GQA: every head has its own K and V
    per_layer = [_bounded(v, kv_key, MAX_HEADS, path) for v in kv_raw] if isinstance(kv_raw, list) \
        else [_bounded(kv_raw, kv_key, MAX_HEADS, path)] * n_layer
    if len(per_layer) != n_layer or (n_head <= 0 and arch not in RECURRENT_ARCHS):
        raise InputError(f"GGUF attention metadata inconsistent ({len(per_layer)} KV entries, {n_layer} layers)",
                         path=path)
    key_len = _arch_key(fields, arch, "attention.key_length")
    value_len = _arch_key(fields, arch, "attention.value_length")
    head_dim_k = _bounded(key_len, f"{arch}.attention.key_length", MAX_DIM, path) if key_len is not None \
        else n_embd // max(n_head, 1)
    head_dim_v = _bounded(value_len, f"{arch}.attention.value_length", MAX_DIM, path) if value_len is not None \
        else n_embd // max(n_head, 1)
    ctx_raw = _arch_key(fields, arch, "context_length")
    ctx = _bounded(ctx_raw, f"{arch}.context_length", MAX_CONTEXT, path) if ctx_raw is not None else None
    vocab_raw = _arch_key(fields, arch, "vocab_size")
    if vocab_raw is None and "tokenizer.ggml.tokens" in fields:
        vocab_raw = len(fields["tokenizer.ggml.tokens"].data)
    vocab = _bounded(vocab_raw, f"{arch}.vocab_size", MAX_VOCAB, path) if vocab_raw is not None else None
    layout = read_layout(arch, n_layer, per_layer, lambda key: _arch_key(fields, arch, key),
                         lambda value, key, limit: _bounded(value, key, limit, path), path)
    name = fields.get("general.name")
    ftype = fields.get("general.file_type")
    return GgufInfo(
        path=str(path),
        file_bytes=path.stat().st_size,
        architecture=arch,
        name=str(_value(name)) if name is not None else None,
        file_type=int(_value(ftype)) if ftype is not None else None,
        parameter_count=sum(int(t.n_elements) for t in reader.tensors),
        weight_bytes=sum(int(t.n_bytes) for t in reader.tensors),
        tensor_count=len(reader.tensors),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=max(per_layer, default=0),
        n_head_kv_per_layer=per_layer,
        head_dim_k=head_dim_k,
        head_dim_v=head_dim_v,
        context_length=ctx,
        vocab_size=vocab,
        layout=layout,
    )
