"""THP `always` vs `madvise` for the llama.cpp worker, side by side: what an OS trial on THP can buy here.

    flock /tmp/hosttune-heavy.lock .venv/bin/python bench/thp_trial.py [--rounds 5] [--json]

For each load mode (`none`: weights read into anonymous memory, which THP can back; `mmap`: weights in the page
cache, which THP does not back), rounds alternate THP modes (always, madvise, always, ...). Each run starts a
private llama-server (-np 1 -c 2048), sends one warm-up and `--requests` completions of a fixed ~500-token prompt
and 128 tokens (cache_prompt off, ignore_eos), and reads llama-server's own timings (prompt_per_second,
predicted_per_second), the load time (spawn to /health 200) and the worker's /proc/PID/smaps_rollup (Rss,
AnonHugePages). The summary gives mean and standard deviation per arm and, robust to a load that drifts over
the run, the always/madvise ratio within each round. THP's `enabled` file is restored to what it was on exit
(finally), whatever happens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from agent.bench.llama_local import LocalLlamaServer
from agent.hostfs import HostPaths
from agent.model_files import resolve_model

PROMPT = " ".join(f"Item {i}: the quick brown fox jumps over the lazy dog." for i in range(40))


def thp_file(paths: HostPaths) -> Path:
    return paths.sys("kernel", "mm", "transparent_hugepage", "enabled")


def thp_mode(path: Path) -> str:
    text = path.read_text()
    return text[text.index("[") + 1:text.index("]")]


def smaps(pid: int, paths: HostPaths) -> dict[str, int]:
    out = {}
    for line in paths.proc(str(pid), "smaps_rollup").read_text().splitlines()[1:]:
        name, rest = line.split(":", 1)
        if name in ("Rss", "AnonHugePages", "Anonymous"):
            out[name] = int(rest.split()[0])
    return out


def one_run(model: Path, load_mode: str, thp: str, requests: int, paths: HostPaths) -> dict[str, Any]:
    thp_file(paths).write_text(thp)
    assert thp_mode(thp_file(paths)) == thp
    srv = LocalLlamaServer(model, threads=2, extra_args=["-np", "1", "-c", "2048", "--load-mode", load_mode])
    t0 = time.monotonic()
    srv.start()
    load_s = time.monotonic() - t0
    try:
        prefill, decode = [], []
        with httpx.Client(timeout=120) as client:
            body = {"prompt": PROMPT, "n_predict": 128, "cache_prompt": False, "ignore_eos": True,
                    "temperature": 0}
            client.post(srv.url + "/completion", json=body).raise_for_status()
            for _ in range(requests):
                t = client.post(srv.url + "/completion", json=body).json()["timings"]
                prefill.append(float(t["prompt_per_second"]))
                decode.append(float(t["predicted_per_second"]))
        assert srv.pid is not None
        mem = smaps(srv.pid, paths)
    finally:
        srv.stop()
    return {"load_mode": load_mode, "thp": thp, "load_s": round(load_s, 3),
            "prefill_tps": round(statistics.mean(prefill), 1), "decode_tps": round(statistics.mean(decode), 1),
            "rss_mib": round(mem.get("Rss", 0) / 1024, 1),
            "anon_huge_mib": round(mem.get("AnonHugePages", 0) / 1024, 1)}


def summary(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["load_mode thp      n  prefill tok/s (mean±sd)  decode tok/s (mean±sd)  load s   RSS MiB  AnonHuge MiB"]
    for mode in ("none", "mmap"):
        for thp in ("always", "madvise"):
            mine = [r for r in rows if r["load_mode"] == mode and r["thp"] == thp]
            if not mine:
                continue

            def ms(k: str, rs: list[dict[str, Any]] = mine) -> str:
                xs = [r[k] for r in rs]
                sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
                return f"{statistics.mean(xs):7.1f}±{sd:<5.1f}"
            lines.append(f"{mode:9} {thp:8} {len(mine):2}  {ms('prefill_tps'):24} {ms('decode_tps'):23} "
                         f"{statistics.mean(r['load_s'] for r in mine):6.2f}  "
                         f"{statistics.mean(r['rss_mib'] for r in mine):7.1f}  "
                         f"{statistics.mean(r['anon_huge_mib'] for r in mine):7.1f}")
    for mode in ("none", "mmap"):
        pairs = [(a, b) for a in rows for b in rows if a["load_mode"] == b["load_mode"] == mode
                 and a.get("round") == b.get("round") and a["thp"] == "always" and b["thp"] == "madvise"]
        if not pairs:
            continue
        for k in ("prefill_tps", "decode_tps"):
            ratios = [a[k] / b[k] for a, b in pairs if b[k]]
            lines.append(f"{mode:9} always/madvise {k}: paired ratio mean {statistics.mean(ratios):.3f} "
                         f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--load-modes", default="none,mmap")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--summarize", type=Path, help="print the summary of a saved --json output (runs nothing)")
    args = ap.parse_args()
    if args.summarize is not None:
        print("\n".join(summary(json.loads(args.summarize.read_text()))))
        return 0
    paths = HostPaths.live()
    model = resolve_model(args.model)
    original = thp_mode(thp_file(paths))
    rows: list[dict[str, Any]] = []
    try:
        for mode in args.load_modes.split(","):
            for r in range(args.rounds):
                order = ("always", "madvise") if r % 2 == 0 else ("madvise", "always")
                for thp in order:
                    rows.append({"round": r, **one_run(model, mode, thp, args.requests, paths)})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        thp_file(paths).write_text(original)
    print(json.dumps(rows, indent=2) if args.json else "\n".join(summary(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
