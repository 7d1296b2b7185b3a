"""Where llama-server's weights live, measured side by side: page cache (mmap of the GGUF), the hugepage pool
(the GGUF staged in a hugetlbfs mount by agent.tuning.weights, then mapped), and anonymous memory
(--load-mode none) with THP as it is (madvise) or `always`.

The same llama-server flags in every arm; arms alternate round by round (ABC ABC ...), each round a fresh
server: load time (spawn to /health 200), then a warm-up and N completions of a fixed long prompt with the
prompt cache off, whose own `timings` give prompt-processing and decode tokens/s; then the worker's smaps_rollup.
Root, real kernel: the pool and THP mode are set for the run and restored after. Run it alone:

    flock /tmp/hosttune-heavy.lock env PYTHONPATH=$PWD .venv/bin/python bench/hugepage_weights.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from agent.bench.llama_local import LocalLlamaServer
from agent.hostfs import HostPaths
from agent.model_files import resolve_model
from agent.tuning.journal import Journal
from agent.tuning.weights import padded_bytes, stage_weights, unstage_weights

ARMS = ("page_cache", "hugetlbfs", "anon_madvise", "anon_always")
PROMPT = ("Summarise the following notes on memory management for a new engineer. " +
          "Pages are mapped on demand, and the kernel keeps a cache of file pages that any process may share. " * 24)
THP = "kernel/mm/transparent_hugepage/enabled"


def rollup(pid: int, paths: HostPaths) -> dict[str, int]:
    out = {}
    for line in paths.proc(str(pid), "smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        out[key.strip()] = int(rest.split()[0])
    return out


def meminfo(key: str, paths: HostPaths) -> int:
    for line in paths.proc("meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@contextmanager
def host_setting(path: Path, value: str) -> Iterator[None]:
    raw = path.read_text()
    before = raw.split("[")[1].split("]")[0] if "[" in raw else raw.strip()
    path.write_text(value)
    try:
        yield
    finally:
        path.write_text(before)


def one_round(arm: str, model: Path, paths: HostPaths, journal: Journal, args: argparse.Namespace) -> dict[str, float]:
    extra = ["-c", str(args.ctx), "-np", "1"]
    target = model
    if arm == "hugetlbfs":
        target = Path(stage_weights(journal, model, paths, gid=None, mount_dir=Path(args.mount)).file)
    if arm.startswith("anon"):
        extra += ["--load-mode", "none"]
    server = LocalLlamaServer(target, threads=args.threads, extra_args=extra)
    try:
        with host_setting(paths.sys(THP), "always" if arm == "anon_always" else "madvise"):
            t0 = time.monotonic()
            server.start()
            load_s = time.monotonic() - t0
            pp, tg = [], []
            with httpx.Client(timeout=120.0) as client:
                body = {"prompt": PROMPT, "n_predict": args.n_predict, "cache_prompt": False, "temperature": 0,
                        "ignore_eos": True}
                client.post(server.url + "/completion", json=body).raise_for_status()  # warm-up
                for _ in range(args.requests):
                    timings = client.post(server.url + "/completion", json=body).json()["timings"]
                    pp.append(timings["prompt_per_second"])
                    tg.append(timings["predicted_per_second"])
            assert server.pid is not None
            smaps = rollup(server.pid, paths)
    finally:
        server.stop()
        if arm == "hugetlbfs":
            unstage_weights(journal, paths)
    return {"load_s": load_s, "pp_tok_s": statistics.median(pp), "tg_tok_s": statistics.median(tg),
            "rss_mib": smaps["Rss"] / 1024,
            "hugetlb_mib": (smaps.get("Private_Hugetlb", 0) + smaps.get("Shared_Hugetlb", 0)) / 1024,
            "anon_huge_mib": smaps.get("AnonHugePages", 0) / 1024}


def summary(rows: list[dict[str, float]]) -> dict[str, str]:
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        out[key] = f"{statistics.mean(values):.2f} [{min(values):.2f}-{max(values):.2f}]"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    ap.add_argument("--requests", type=int, default=3, help="timed completions per round (median kept)")
    ap.add_argument("--n-predict", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--model", default="default")
    ap.add_argument("--json", type=Path, help="write every round here")
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    if not set(arms) <= set(ARMS):
        ap.error(f"--arms: choose from {', '.join(ARMS)}")
    paths = HostPaths.live()
    model = resolve_model(args.model)
    pool = paths.sys("kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
    pages = padded_bytes(model.stat().st_size) // (2 << 20)
    results: dict[str, list[dict[str, float]]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory(prefix="hugepage-weights-") as tmp:
        args.mount = str(Path(tmp) / "mnt")
        journal = Journal(Path(tmp) / "journal.json")
        base = int(pool.read_text())
        with host_setting(pool, str(base + pages)):
            for r in range(args.rounds):
                for arm in arms:
                    row = one_round(arm, model, paths, journal, args)
                    results[arm].append(row)
                    print(f"round {r + 1} {arm}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
        free_after = meminfo("HugePages_Free", paths)
    print(f"\nload average {Path('/proc/loadavg').read_text().split()[:3]}; HugePages_Free after {free_after}")
    print(f"{'arm':<14}" + "".join(f"{k:>26}" for k in results[arms[0]][0]))
    for arm in arms:
        print(f"{arm:<14}" + "".join(f"{v:>26}" for v in summary(results[arm]).values()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
