"""Torch worker decode throughput at batch 1, 4 and 16, next to transformers' own generate() at the same batch, in
one run on the same machine (so both see the same load from anything else running).

    .venv/bin/python bench/torch_batch.py [--model default] [--batches 1,4,16] [--new-tokens 32] [--rounds 2]
                                          [--threads N] [--device auto] [--dtype auto] [--json OUT]

Worker: one `python -m agent.worker.torch_server` process; for each batch size B the live max batch is set to B
over /control and B clients each send `rounds` completions of exactly new-tokens tokens (ignore_eos) at once;
tokens/s = completion tokens / wall time of the round, best round kept. Prefill is included (short prompts), as a
client sees it. generate(): the same prompts, left-padded to a batch of B, greedy, exactly new-tokens tokens.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.worker.models import resolve_model
from agent.worker.torch_control import TorchWorkerControl

PROMPTS = ["Once upon a time", "The three primary colors are", "In 1492, Columbus", "My favorite food is",
           "The quick brown fox", "List three fruits:", "A haiku about rain:", "Why is the sky blue?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_points(model: Path, batches: list[int], new_tokens: int, rounds: int, args: argparse.Namespace
                  ) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="torch-bench-"))
    token = tmp / "token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, secrets.token_hex(16).encode())
    os.close(fd)
    port = free_port()
    argv = [sys.executable, "-m", "agent.worker.torch_server", "--model", str(model), "--port", str(port),
            "--control-token-file", str(token), "--device", args.device, "--dtype", args.dtype,
            "--log-level", "warning"]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    log = open(tmp / "worker.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=600, trust_env=False)
    points: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"worker exited: {(tmp / 'worker.log').read_text()[-2000:]}")
            try:
                if client.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("worker not ready in 600 s")
            time.sleep(0.2)
        control = TorchWorkerControl(url, token_file=token)
        state = control.state()

        def one(prompt: str) -> int:
            r = client.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": new_tokens,
                                                            "ignore_eos": True})
            r.raise_for_status()
            return int(r.json()["usage"]["completion_tokens"])

        one(PROMPTS[0])  # warm-up
        for b in batches:
            control.set_max_batch(b)
            best = 0.0
            m0 = control.stats()
            for _ in range(rounds):
                prompts = [PROMPTS[i % len(PROMPTS)] for i in range(b)]
                t0 = time.perf_counter()
                with cf.ThreadPoolExecutor(b) as pool:
                    tokens = sum(pool.map(one, prompts))
                best = max(best, tokens / (time.perf_counter() - t0))
            m1 = control.stats()
            occupancy = (m1["decode_rows_total"] - m0["decode_rows_total"]) / max(1.0, m1["n_decode_total"] -
                                                                                   m0["n_decode_total"])
            points.append({"engine": "torch worker", "batch": b, "tokens_per_s": round(best, 1),
                           "mean_rows_per_step": round(occupancy, 2), "device": state.device,
                           "dtype": state.dtype})
            print(f"worker     batch {b:>3}: {best:7.1f} tok/s (rows per step {occupancy:.2f})", file=sys.stderr)
        control.close()
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return points


def generate_points(model_path: Path, batches: list[int], new_tokens: int, rounds: int, args: argparse.Namespace
                    ) -> list[dict[str, Any]]:
    import torch

    from agent.worker.torch_server.loader import load_model, pick_device, pick_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    loaded = load_model(model_path, device, pick_dtype(args.dtype, device))
    tok, model = loaded.tokenizer, loaded.model
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    points: list[dict[str, Any]] = []
    with torch.inference_mode():
        warm = tok(PROMPTS[:1], return_tensors="pt").to(device)
        model.generate(**warm, max_new_tokens=4, do_sample=False)
        for b in batches:
            enc = tok([PROMPTS[i % len(PROMPTS)] for i in range(b)], return_tensors="pt", padding=True).to(device)
            best = 0.0
            for _ in range(rounds):
                t0 = time.perf_counter()
                out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                produced = (out.shape[1] - enc["input_ids"].shape[1]) * b
                best = max(best, produced / (time.perf_counter() - t0))
            points.append({"engine": "generate()", "batch": b, "tokens_per_s": round(best, 1),
                           "device": str(device), "dtype": loaded.dtype_name})
            print(f"generate() batch {b:>3}: {best:7.1f} tok/s", file=sys.stderr)
    return points


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--batches", default="1,4,16")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    model = resolve_model(args.model)
    batches = [int(x) for x in args.batches.split(",") if x.strip()]
    t0 = time.time()
    points = worker_points(model, batches, args.new_tokens, args.rounds, args)
    points += generate_points(model, batches, args.new_tokens, args.rounds, args)
    load = os.getloadavg()
    result = {"model": model.name, "new_tokens": args.new_tokens, "rounds": args.rounds, "cpus": os.cpu_count(),
              "loadavg_1m_at_end": round(load[0], 2), "seconds": round(time.time() - t0, 1), "points": points}
    print("| batch | torch worker tok/s | generate() tok/s | worker / generate | worker rows per step |")
    print("|---:|---:|---:|---:|---:|")
    for b in batches:
        w = next(x for x in points if x["engine"] == "torch worker" and x["batch"] == b)
        g = next(x for x in points if x["engine"] == "generate()" and x["batch"] == b)
        print(f"| {b} | {w['tokens_per_s']} | {g['tokens_per_s']} | {w['tokens_per_s'] / g['tokens_per_s']:.2f} | "
              f"{w['mean_rows_per_step']} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
