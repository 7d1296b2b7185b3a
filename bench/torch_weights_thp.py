"""Torch worker with and without its weights in a transparent-huge-page arena (`--weights-arena thp`, what
`worker.weights.backing: anon` asks for): model load time and decode tokens/s, alternating A/B, side by side.

    flock /tmp/hosttune-heavy.lock .venv/bin/python bench/torch_weights_thp.py [--rounds 5] [--new-tokens 48]
                                                  [--requests 3] [--threads N] [--json OUT]

Each round starts a fresh `python -m agent.worker.torch_server` (fp32, max batch 1) on the bundled model:
load = spawn to the first /health 200 (includes the arena copy for B); decode = `requests` completions one after
another of exactly new-tokens tokens (ignore_eos, short prompt), tokens / wall time; then the worker's
smaps_rollup (AnonHugePages, Rss) while it is loaded. Rounds alternate A (torch's own allocations) and B (arena),
A first, so load from anything else on the machine hits both alike. Reports mean, standard deviation, min and max.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.bench.llama_local import free_port
from agent.hostfs import HostPaths
from agent.model_files import resolve_model
from agent.worker.probes import probe_health
from agent.worker.smaps import read_worker_memory

PROMPT = "Write a short story about a lighthouse keeper."


def one_round(model: Path, arena: bool, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    argv = [sys.executable, "-m", "agent.worker.torch_server", "--model", str(model), "--port", str(port),
            "--dtype", "fp32", "--max-batch", "1", "--log-level", "warning"]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if arena:
        argv += ["--weights-arena", "thp"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=600, trust_env=False) as http:
            while probe_health(url + "/health", 2.0) != 200:
                if proc.poll() is not None:
                    raise SystemExit(f"worker exited with {proc.returncode}")
                time.sleep(0.05)
            load_s = time.monotonic() - t0
            http.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 4})  # warm-up
            tokens, t1 = 0, time.monotonic()
            for _ in range(args.requests):
                r = http.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": args.new_tokens,
                                                              "ignore_eos": True})
                r.raise_for_status()
                tokens += int(r.json()["usage"]["completion_tokens"])
            decode = tokens / (time.monotonic() - t1)
        mem = read_worker_memory(HostPaths.live(), proc.pid)
        return {"arena": arena, "load_s": round(load_s, 3), "decode_tok_s": round(decode, 2),
                "anon_huge_mib": round((mem.anon_huge_bytes or 0) / 2**20, 1),
                "rss_mib": round((mem.rss_bytes or 0) / 2**20, 1), "thp_mode": mem.thp_mode}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def summary(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    xs = [r[key] for r in rows]
    return {"mean": round(statistics.fmean(xs), 3), "stdev": round(statistics.stdev(xs), 3) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--requests", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    model = Path(resolve_model("default"))
    rows: list[dict[str, Any]] = []
    for i in range(args.rounds):
        for arena in (False, True):
            row = one_round(model, arena, args)
            row["round"] = i + 1
            rows.append(row)
            print(json.dumps(row), flush=True)
    out: dict[str, Any] = {"rounds": rows, "loadavg": os.getloadavg()}
    print(f"{'':12} {'load s':>22} {'decode tok/s':>22} {'AnonHuge MiB':>14} {'RSS MiB':>10}")
    for arena, name in ((False, "A torch"), (True, "B thp arena")):
        sel = [r for r in rows if r["arena"] is arena]
        load, dec = summary(sel, "load_s"), summary(sel, "decode_tok_s")
        out[name] = {"load_s": load, "decode_tok_s": dec, "anon_huge_mib": summary(sel, "anon_huge_mib"),
                     "rss_mib": summary(sel, "rss_mib")}
        print(f"{name:12} {load['mean']:>8.2f} ± {load['stdev']:<5.2f}[{load['min']:.1f}-{load['max']:.1f}] "
              f"{dec['mean']:>8.2f} ± {dec['stdev']:<5.2f}[{dec['min']:.1f}-{dec['max']:.1f}] "
              f"{out[name]['anon_huge_mib']['mean']:>14.1f} {out[name]['rss_mib']['mean']:>10.1f}")
    print(f"load average at the end: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
