"""Layer layouts (full, sliding-window, recurrent, hybrid) read from GGUF headers written with gguf's GGUFWriter,
and the context memory computed from them as llama.cpp allocates it. Expected values are written out here from
llama.cpp's sizing rules (pad to 256, one stream per slot, SWA cache = window + ubatch, state rows per sequence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from agent.errors import InputError
from agent.worker.fit import device_memory, plan_fit
from agent.worker.gguf_meta import read_gguf
from agent.worker.kv_memory import context_memory
from tests.support.worker_facts import GiB, one_node_vm


def write(path: Path, arch: str, n_layer: int, **kv: object) -> Path:
    w = GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_embedding_length(int(kv.pop("n_embd", 256)))  # type: ignore[call-overload]
    w.add_context_length(32768)
    for key, value in kv.items():
        name = f"{arch}.{key}"
        if isinstance(value, list):
            w.add_array(name, value)
        else:
            w.add_uint32(name, int(value))  # type: ignore[call-overload]
    w.add_tensor("token_embd.weight", np.zeros((100, 8), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gemma3_like(tmp_path: Path, n_layer: int = 18, **extra: object) -> Path:
    return write(tmp_path / "g.gguf", "gemma3", n_layer, n_embd=640, **{
        "attention.head_count": 4, "attention.head_count_kv": 1, "attention.key_length": 256,
        "attention.value_length": 256, "attention.sliding_window": 512, **extra})


def test_plain_model_is_full_attention(tmp_path: Path) -> None:
    info = read_gguf(write(tmp_path / "m.gguf", "llama", 4, **{"attention.head_count": 8,
                                                                 "attention.head_count_kv": 2}))
    assert info.layout.name == "full" and not any(info.layout.swa_layers)
    mem = context_memory(info, 1000, 1)
    # 1000 -> 1024 cells (pad 256); 4 layers x 2 heads x 32 dims x (K + V) x 2 bytes
    assert [(p.kind, p.cells, p.streams) for p in mem.parts] == [("full", 1024, 1)]
    assert mem.bytes == 1024 * 4 * 2 * 32 * 2 * 2


def test_slots_split_the_context_each_padded_to_256(tmp_path: Path) -> None:
    info = read_gguf(write(tmp_path / "m.gguf", "llama", 2, **{"attention.head_count": 4,
                                                                 "attention.head_count_kv": 4}))
    mem = context_memory(info, 4096, 3)
    # 4096 / 3 = 1365 -> 1536 per slot; three streams
    assert (mem.n_ctx_seq, mem.n_ctx, mem.parts[0].streams) == (1536, 4608, 3)
    assert mem.bytes == 4608 * 2 * 4 * 64 * 2 * 2
    unified = context_memory(info, 4096, 3, unified=True)
    assert (unified.n_ctx_seq, unified.parts[0].streams, unified.bytes) == (4096, 1, 4096 * 2 * 4 * 64 * 2 * 2)


def test_gemma3_builtin_pattern_every_sixth_layer_is_global(tmp_path: Path) -> None:
    info = read_gguf(gemma3_like(tmp_path))
    lay = info.layout
    assert lay.name == "swa" and lay.sliding_window == 512
    assert [il for il, s in enumerate(lay.swa_layers) if not s] == [5, 11, 17]
    per_layer_cell = 1 * 256 * 2 * 2  # 1 KV head x 256 dims, K and V, f16
    mem = context_memory(info, 8192, 2)
    parts = {p.kind: p for p in mem.parts}
    assert (parts["full"].layers, parts["full"].cells, parts["full"].streams) == (3, 4096, 2)
    # SWA cache per stream: pad256(min(4096, 512 x 1 + 512)) = 1024 cells
    assert (parts["swa"].layers, parts["swa"].cells, parts["swa"].streams) == (15, 1024, 2)
    assert parts["swa"].bytes == 15 * per_layer_cell * 1024 * 2
    assert mem.bytes == parts["full"].bytes + parts["swa"].bytes == (3 * 4096 + 15 * 1024) * 2 * per_layer_cell
    # a small context: the SWA cache is never larger than the slot's context
    small = {p.kind: p for p in context_memory(info, 512, 1).parts}
    assert small["swa"].cells == 512
    # unified KV: the window is per sequence, so the SWA cache holds window x slots + ubatch
    uni = {p.kind: p for p in context_memory(info, 8192, 4, unified=True).parts}
    assert (uni["swa"].cells, uni["swa"].streams) == (2560, 1)
    full = {p.kind: p for p in context_memory(info, 8192, 2, swa_full=True).parts}
    assert full["swa"].cells == 4096


def test_quantized_cache_types_on_swa_layers(tmp_path: Path) -> None:
    info = read_gguf(gemma3_like(tmp_path))
    mem = context_memory(info, 4096, 1, "q8_0", "q8_0")
    row = 256 // 32 * 34  # one head of 256 values in q8_0 blocks
    assert mem.bytes == (3 * 4096 + 15 * 1024) * 2 * row


def test_explicit_pattern_int_and_per_layer_array(tmp_path: Path) -> None:
    info = read_gguf(gemma3_like(tmp_path, n_layer=8, **{"attention.sliding_window_pattern": 4}))
    assert [il for il, s in enumerate(info.layout.swa_layers) if not s] == [3, 7]
    pattern = [True, False, True, True, False, True, True, True]
    info = read_gguf(gemma3_like(tmp_path, n_layer=8, **{"attention.sliding_window_pattern": pattern}))
    assert info.layout.swa_layers == pattern
    with pytest.raises(InputError, match="one entry per layer"):
        read_gguf(gemma3_like(tmp_path, n_layer=8, **{"attention.sliding_window_pattern": [True, False]}))
    with pytest.raises(InputError, match="sliding_window"):
        read_gguf(gemma3_like(tmp_path, **{"attention.sliding_window": 1 << 30}))


def test_mamba_keeps_a_fixed_state_per_sequence(tmp_path: Path) -> None:
    info = read_gguf(write(tmp_path / "m.gguf", "mamba", 24, n_embd=768, **{
        "ssm.conv_kernel": 4, "ssm.inner_size": 1536, "ssm.state_size": 16, "ssm.time_step_rank": 48}))
    lay = info.layout
    assert lay.name == "recurrent" and all(lay.recurrent_layers)
    assert (lay.state_r_per_seq, lay.state_s_per_seq) == (3 * 1536, 16 * 1536)
    one = context_memory(info, 4096, 1)
    assert [(p.kind, p.cells, p.layers) for p in one.parts] == [("recurrent", 1, 24)]
    assert one.bytes == 24 * (3 * 1536 + 16 * 1536) * 4
    # no growth with the context, linear in the slots
    assert context_memory(info, 65536, 1).bytes == one.bytes
    assert context_memory(info, 4096, 4).bytes == 4 * one.bytes
    with pytest.raises(InputError, match=r"ssm\.state_size"):
        read_gguf(write(tmp_path / "bad.gguf", "mamba", 2, **{"ssm.conv_kernel": 4, "ssm.inner_size": 64}))


def test_rwkv_state_sizes(tmp_path: Path) -> None:
    info = read_gguf(write(tmp_path / "r.gguf", "rwkv6", 12, n_embd=512, **{"wkv.head_size": 64}))
    assert (info.layout.state_r_per_seq, info.layout.state_s_per_seq) == (2 * 512, 512 * 64)


def test_hybrid_layers_without_kv_heads_are_recurrent(tmp_path: Path) -> None:
    kv = [0, 0, 0, 8, 0, 0, 0, 8]
    info = read_gguf(write(tmp_path / "j.gguf", "jamba", 8, n_embd=512, **{
        "attention.head_count": 16, "attention.head_count_kv": kv, "ssm.conv_kernel": 4,
        "ssm.inner_size": 1024, "ssm.state_size": 16}))
    assert info.layout.name == "hybrid"
    mem = {p.kind: p for p in context_memory(info, 2048, 2).parts}
    assert (mem["full"].layers, mem["full"].cells, mem["full"].streams) == (2, 1024, 2)
    assert mem["full"].bytes == 2 * 2048 * 8 * 32 * 2 * 2
    assert (mem["recurrent"].layers, mem["recurrent"].cells) == (6, 2)
    assert mem["recurrent"].bytes == 6 * 2 * (3 * 1024 + 16 * 1024) * 4


def test_fit_report_names_the_layout_and_its_parts(tmp_path: Path) -> None:
    info = read_gguf(gemma3_like(tmp_path))
    report = plan_fit(info, device_memory(one_node_vm(free=4 * GiB), "cpu"), ctx=8192, parallel=2)
    assert report.layout == "swa"
    assert report.context_memory is not None
    assert {p.kind for p in report.context_memory.parts} == {"full", "swa"}
    assert report.requested is not None and report.requested.kv_bytes == report.context_memory.bytes
    # per token only the 3 global layers grow with the context
    assert report.kv_bytes_per_token["f16"] == 3 * 256 * 2 * 2
    for opt in report.options:  # every option's memory is the engine's, and fits
        assert opt.kv_bytes == context_memory(info, opt.ctx_total, opt.parallel).bytes
        assert opt.kv_bytes <= report.kv_budget_bytes
