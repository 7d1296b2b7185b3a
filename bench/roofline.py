"""Single-stream decode tokens/s of llama-server against the memory-bandwidth roofline, on this machine.

    .venv/bin/python bench/roofline.py [--model default] [--threads 2] [--tokens 128] [--runs 5] [--json OUT]

Decoding one stream reads every weight once per token (plus the KV cache so far), so a machine that moves B bytes
per second from memory cannot decode faster than B / bytes-per-token tokens/s: that is the roofline.

1. Bandwidth: read a 512 MiB tensor end to end (`torch.sum`, float32) with the same number of threads llama-server
   gets, best of --runs; also a copy (read + write: counted as 2x its size). Bytes per second of the best run.
2. Bytes per token: the GGUF's tensor data as stored (quantized). With tied embeddings (no `output.weight`) the
   token embedding matrix is read whole as the output projection; otherwise only one row of it is. Plus the KV
   cache read at the mean position of the run (n_layer x 2 x n_head_kv x head_dim x position x 2 bytes, f16).
3. Decode: llama-server (-np 1, --threads N) answers one short prompt with exactly --tokens tokens (ignore_eos), a
   warm-up first; its own `timings.predicted_per_second` (decode only, prompt excluded), best of --runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.bench.llama_local import LocalLlamaServer
from agent.model_files import resolve_model
from agent.worker.gguf_meta import read_gguf


def bandwidth(threads: int, runs: int, mib: int = 512) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(mib * 1024 * 1024 // 4, dtype=torch.float32)
    y = torch.empty_like(x)
    size = x.numel() * 4
    read = copy = 0.0
    for _ in range(runs):
        t0 = time.perf_counter()
        float(x.sum())
        read = max(read, size / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        y.copy_(x)
        copy = max(copy, 2 * size / (time.perf_counter() - t0))
    return {"read_bytes_per_s": read, "copy_bytes_per_s": copy, "buffer_bytes": float(size)}


def bytes_per_token(model: Path, position: float) -> dict[str, float]:
    from gguf import GGUFReader

    info = read_gguf(model)
    names = {t.name: int(t.n_bytes) for t in GGUFReader(model).tensors}
    weights = float(info.weight_bytes)
    tied = "output.weight" not in names
    if not tied:  # only one row of the embedding matrix is read per token
        embd = names.get("token_embd.weight", 0)
        weights -= embd - embd / max(1, info.vocab_size or 1)
    kv = 0.0
    if info.n_layer and info.n_head_kv and info.head_dim_k:
        kv = info.n_layer * 2 * info.n_head_kv * info.head_dim_k * position * 2
    return {"weights": weights, "kv_cache": kv, "total": weights + kv, "tied_embeddings": float(tied)}


def decode(model: Path, threads: int, tokens: int, runs: int) -> dict[str, Any]:
    body = {"prompt": "Write a long story about a lighthouse keeper.", "n_predict": tokens, "ignore_eos": True,
            "temperature": 0, "cache_prompt": False}
    best: dict[str, Any] = {}
    with LocalLlamaServer(model, threads=threads, extra_args=["-np", "1", "-c", "2048"]) as server, \
            httpx.Client(timeout=300, trust_env=False) as client:
        client.post(server.url + "/completion", json={**body, "n_predict": 16}).raise_for_status()  # warm-up
        for _ in range(runs):
            t = client.post(server.url + "/completion", json=body).json()["timings"]
            if t["predicted_per_second"] > best.get("predicted_per_second", 0):
                best = t
    return {"tokens_per_s": best["predicted_per_second"], "predicted_n": best["predicted_n"],
            "prompt_n": best["prompt_n"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    model = resolve_model(args.model)
    bw = bandwidth(args.threads, args.runs)
    dec = decode(model, args.threads, args.tokens, args.runs)
    per_token = bytes_per_token(model, dec["prompt_n"] + dec["predicted_n"] / 2)
    roof_read = bw["read_bytes_per_s"] / per_token["total"]
    roof_copy = bw["copy_bytes_per_s"] / per_token["total"]
    result = {"model": model.name, "threads": args.threads, "cpus": os.cpu_count(), "bandwidth": bw,
              "bytes_per_token": per_token, "decode": dec, "roofline_tokens_per_s": roof_read,
              "roofline_copy_tokens_per_s": roof_copy, "fraction_of_roofline": dec["tokens_per_s"] / roof_read,
              "effective_bytes_per_s": dec["tokens_per_s"] * per_token["total"],
              "loadavg_1m_at_end": os.getloadavg()[0]}
    gb = 1e9
    print(f"memory bandwidth ({args.threads} threads): read {bw['read_bytes_per_s'] / gb:.1f} GB/s, "
          f"copy {bw['copy_bytes_per_s'] / gb:.1f} GB/s")
    print(f"bytes per token: {per_token['total'] / 1e6:.1f} MB (weights {per_token['weights'] / 1e6:.1f} MB"
          f"{', tied embeddings' if per_token['tied_embeddings'] else ''}, KV {per_token['kv_cache'] / 1e6:.2f} MB)")
    print("| single-stream decode | roofline (read bw / bytes per token) | fraction | effective bandwidth |")
    print("|---:|---:|---:|---:|")
    print(f"| {dec['tokens_per_s']:.1f} tok/s | {roof_read:.1f} tok/s | {dec['tokens_per_s'] / roof_read:.0%} | "
          f"{result['effective_bytes_per_s'] / gb:.1f} GB/s |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
