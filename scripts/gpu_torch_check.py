"""Body of scripts/gpu-torch-check.sh: equality at batch 1 and a short benchmark of the torch worker on CUDA."""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.model_files import resolve_model

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at", "Once upon a time"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batches", default="1,4,16,64")
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu-torch-check: torch sees no CUDA device", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
    model = resolve_model(args.model)

    # 1. the worker on CUDA at max batch 1 vs generate() on the same device and dtype
    tmp = Path(tempfile.mkdtemp(prefix="gpu-torch-check-"))
    token = tmp / "token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, secrets.token_hex(16).encode())
    os.close(fd)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp / "worker.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "agent.worker.torch_server", "--model", str(model), "--port",
                             str(port), "--device", "cuda", "--dtype", args.dtype, "--max-batch", "1",
                             "--control-token-file", str(token)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=300, trust_env=False)
    rows = []
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                print((tmp / "worker.log").read_text()[-3000:], file=sys.stderr)
                return 1
            try:
                if client.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        got = {}
        for prompt in PROMPTS:
            r = client.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": 24, "return_tokens": True})
            r.raise_for_status()
            got[prompt] = r.json()["choices"][0]["tokens"]
    finally:
        client.close()
        proc.terminate()
        proc.wait(60)
        log.close()

    from agent.worker.torch_server.loader import load_model

    loaded = load_model(model, torch.device("cuda"), args.dtype)
    ok = True
    with torch.inference_mode():
        for prompt in PROMPTS:
            enc = loaded.tokenizer(prompt, return_tensors="pt").to("cuda")
            out = loaded.model.generate(**enc, max_new_tokens=24, do_sample=False,
                                        pad_token_id=loaded.tokenizer.eos_token_id)
            want = out[0, enc["input_ids"].shape[1]:].tolist()
            same = got[prompt] == want[:len(got[prompt])]
            ok &= same
            first = next((i for i, (a, b) in enumerate(zip(got[prompt], want, strict=False)) if a != b), None)
            rows.append((prompt, len(got[prompt]), "equal" if same else f"differs at token {first}"))
    del loaded
    torch.cuda.empty_cache()
    print(f"\nbatch-1 equality, worker vs generate() on cuda/{args.dtype}:")
    print("| prompt | tokens | result |\n|---|---:|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")

    # 2. throughput: worker vs generate() at each batch size
    print("\nthroughput:")
    bench = subprocess.run([sys.executable, "bench/torch_batch.py", "--model", str(model), "--device", "cuda",
                            "--dtype", args.dtype, "--new-tokens", str(args.new_tokens), "--batches", args.batches,
                            "--rounds", "2", "--json", str(tmp / "bench.json")], check=False)
    print(f"(raw numbers: {tmp / 'bench.json'})")
    return 0 if ok and bench.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
