"""Gateway overhead: the same load sent straight to llama-server and through `hosttune gateway`, in one run.

    .venv/bin/python bench/gateway_overhead.py [--concurrency 1,4] [--requests 40] [--rounds 3] [--json FILE]

One llama-server (bundled model, -t 2, -np 4, 1024 context tokens per slot) and one gateway process
(`hosttune gateway`, admission limit above the load so it never queues) serve both paths. Rounds alternate
direct / gateway (ABAB...) so slow drift on a shared machine hits both alike; each round sends the same seeded
request sequence (short chat prompts, exactly --max-tokens output tokens with ignore_eos). Reported per level:
output tokens/s and TTFT/ITL p50 — the median over rounds — and the gateway's difference.
CPU time per output token of the engine and of the gateway process (psutil, per round) is reported too: unlike
wall-clock figures it hardly moves when other work shares the machine. Goal (issue 5): <= 2% throughput,
<= 1 ms p50 TTFT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.bench.corpus import MixSpec
from agent.bench.llama_local import LocalLlamaServer, die_with_parent, free_port
from agent.bench.load import Bounds, Target
from agent.bench.runner import bench
from agent.model_files import default_model_path


def start_gateway(upstream: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "agent", "gateway", "--upstream", upstream, "--port", str(port),
                             "--limit", "64"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=die_with_parent)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"gateway exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.1)
    raise SystemExit("gateway not ready after 60 s")


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def one_round(url: str, concurrency: int, requests: int, max_tokens: int, seed: int,
              pids: dict[str, int] | None = None) -> dict[str, Any]:
    mix = MixSpec({"chat": 1.0}, max_tokens=max_tokens)
    cpu0 = {name: cpu_s(pid) for name, pid in (pids or {}).items()}
    report = bench(Target(url, ignore_eos=True), mix, [concurrency], [], Bounds(duration_s=None, requests=requests),
                   seed=seed, warmup=0)
    lv = report["levels"][0]
    if lv["errors"]:
        raise SystemExit(f"errors during the round at {url} (c={concurrency}): {lv['errors']} "
                         f"{lv['error_examples']}")
    tokens = max(lv["output_tokens"], 1)
    cpu = {f"{name}_cpu_us_per_token": (cpu_s(pid) - cpu0[name]) / tokens * 1e6
           for name, pid in (pids or {}).items()}
    return {**cpu, "tokens_per_s": lv["tokens_per_s"], "ttft_p50_ms": lv["ttft_s"]["p50"] * 1000,
            "ttft_p95_ms": lv["ttft_s"]["p95"] * 1000, "itl_p50_ms": lv["itl_s"]["p50"] * 1000,
            "output_tokens": lv["output_tokens"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--requests", type=int, default=40, help="requests per round")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per path (alternating)")
    ap.add_argument("--threads", type=int, default=2, help="llama-server -t (default 2)")
    ap.add_argument("--np", type=int, default=4, help="llama-server -np (default 4)")
    ap.add_argument("--json", type=Path, help="write the raw results here")
    ap.add_argument("--engine-log", type=Path, help="append llama-server's output here")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, Any] = {"levels": {}, "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}
    results["loadavg_start"] = os.getloadavg()
    engine = ["-np", str(args.np), "-c", str(1024 * args.np)]
    results["engine"] = {"threads": args.threads, "args": engine}
    with LocalLlamaServer(default_model_path(), threads=args.threads, extra_args=engine,
                          log_path=args.engine_log) as llama:
        gw_port = free_port()
        gateway = start_gateway(llama.url, gw_port)
        try:
            paths = {"direct": llama.url, "gateway": f"http://127.0.0.1:{gw_port}"}
            print(f"paths: {paths}", file=sys.stderr)
            one_round(llama.url, 1, 4, 16, seed=99)  # warm the engine and the prompt cache paths once
            for c in levels:
                rounds: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
                for i in range(args.rounds):
                    order = ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct")
                    for name in order:
                        r = one_round(paths[name], c, args.requests, args.max_tokens, seed=1,
                                      pids={"engine": llama.pid or 0, "gateway": gateway.pid})
                        rounds[name].append(r)
                        print(f"c={c} round {i + 1} {name:8s} {r['tokens_per_s']:7.1f} tok/s  "
                              f"ttft p50 {r['ttft_p50_ms']:7.1f} ms  itl p50 {r['itl_p50_ms']:6.2f} ms  "
                              f"cpu/token engine {r['engine_cpu_us_per_token']:7.0f} us "
                              f"gateway {r['gateway_cpu_us_per_token']:5.0f} us",
                              file=sys.stderr)
                med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rounds.items()}
                d, g = med["direct"], med["gateway"]
                results["levels"][c] = {"rounds": rounds, "median": med,
                                        "throughput_delta_pct": (g["tokens_per_s"] / d["tokens_per_s"] - 1) * 100,
                                        "ttft_p50_delta_ms": g["ttft_p50_ms"] - d["ttft_p50_ms"],
                                        "itl_p50_delta_ms": g["itl_p50_ms"] - d["itl_p50_ms"]}
        finally:
            os.kill(gateway.pid, signal.SIGTERM)
            gateway.wait(15)
    results["loadavg_end"] = os.getloadavg()
    print(f"load average (1/5/15 min) at start {results['loadavg_start']}, at end {results['loadavg_end']}")
    print("| concurrency | direct tok/s | gateway tok/s | Δ throughput | direct TTFT p50 | gateway TTFT p50 | "
          "Δ TTFT p50 | Δ ITL p50 | engine CPU/token | gateway CPU/token (gateway rounds) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c, lv in results["levels"].items():
        d, g = lv["median"]["direct"], lv["median"]["gateway"]
        print(f"| {c} | {d['tokens_per_s']:.1f} | {g['tokens_per_s']:.1f} | {lv['throughput_delta_pct']:+.2f}% | "
              f"{d['ttft_p50_ms']:.1f} ms | {g['ttft_p50_ms']:.1f} ms | {lv['ttft_p50_delta_ms']:+.2f} ms | "
              f"{lv['itl_p50_delta_ms']:+.3f} ms | {g['engine_cpu_us_per_token']:.0f} µs | "
              f"{g['gateway_cpu_us_per_token']:.0f} µs |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
