"""What each OS-level change buys llama-server, measured alone, side by side with the host as found.

    flock /tmp/hosttune-heavy.lock env PYTHONPATH=$PWD .venv/bin/python bench/os_effects.py --rounds 5 \\
        --out os-effects.json
    ... --changes hugetlbfs,mlock --model-file ~/.cache/hosttune/models/<dir>/<model>.gguf
    ... --restore        # after a run that was killed: put back what it changed, then exit

Changes (--changes, comma-separated; default all this host allows), each as arm A -> arm B:
  hugetlbfs            found -> the GGUF staged in a hugetlbfs mount of the 2 MiB pool (agent/tuning/weights.py,
                       the daemon's own staging; the pool grown by the pages it needs and shrunk back after)
  no-mmap              found -> weights read into anonymous memory (--load-mode none)
  thp-MODE             found -> THP `enabled` = MODE (never / madvise / always, except the mode found)
  anon-thp-MODE        no-mmap arm -> the same with THP = MODE (anonymous weights are what THP can back)
  mlock                found -> --load-mode mmap+mlock (RLIMIT_MEMLOCK checked unless root)
  readahead            found -> the model disk's read_ahead_kb = --readahead-kb (default 128, or 8192 when 128
                       was found): matters for the cold load only
`found` is the host as found: llama-server's default mmap of the GGUF, nothing changed.
The servers run on a private copy of the model (in --copy-dir, same bytes, fsynced, removed at the end): on a
shared machine another process mapping the model itself would keep its pages cached, and a cold load would not be
cold. --no-copy measures on the model file itself.

Every round runs every arm once (the order rotated each round), each a FRESH llama-server (-np 1, -c --ctx,
-t --threads), so round i of A and round i of B saw the host at about the same time (other work on the machine
moves both): per arm-round
  load cold   the model file's page cache dropped (posix_fadvise DONTNEED on that file only; the fraction still
              resident is recorded), then exec -> /health 200 (plus the staging copy, for hugetlbfs)
  load warm   a second fresh server on the now cached file: exec -> /health 200
  prefill / decode tok/s   llama-server's own `timings` of --requests completions (median) of a fixed prompt of
              --prompt-tokens tokens, --n-predict tokens, temperature 0, cache_prompt false, ignore_eos
  RSS, Hugetlb, AnonHugePages, FilePmdMapped, Locked   the server's /proc/PID/smaps_rollup after the completions
The report gives each arm's medians and each change's B/A ratio of round means with a 95% paired bootstrap
interval (agent/bench/stats.py); `*` marks an interval that excludes 1. Progress goes to stderr.

Host safety: root only; refuses to start when hosttune holds an applied policy (it could re-apply THP mid-arm), when
a hosttune journal transaction is open, when an earlier run left its record (run --restore), or when the host is
not as its snapshot (agent/bench/hostsnap.py: sysctls, THP, hugepage pools, block queues, governors, hugetlbfs
mounts) says before any round. Every value an arm sets is put
back when the arm ends (finally) and the end prints the host as found vs as left (exit status 1 if they differ).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from agent.bench.hostsnap import check_not_tuned, check_untouched, diff_snapshot, open_transactions, take_snapshot
from agent.bench.llama_local import LocalLlamaServer
from agent.bench.os_arms import (
    Arm,
    FoundHost,
    arm_host,
    catalogue,
    find_host,
    forget_found,
    keep_found,
    mlock_problem,
    refuse_if_left,
    restore_found,
    run_dir,
    served_model,
)
from agent.bench.os_report import build_report, print_report
from agent.config import DEFAULT_STATE_DIR
from agent.errors import HostError, HostTuneError, InputError
from agent.hostfs import HostPaths
from agent.model_files import resolve_model
from agent.worker import pagecache
from agent.worker.placement import queue_disk_of_file
from agent.worker.smaps import read_worker_memory

MIB = 1 << 20
TEXT = " ".join(f"Note {i}: pages are mapped on demand, and the kernel keeps a cache of file pages that any "
                f"process may share; huge pages cut the misses of the translation buffer." for i in range(200))


@dataclass
class Run:
    args: argparse.Namespace
    paths: HostPaths
    model: Path
    found: FoundHost
    run_dir: Path
    prompt: list[int] | None = None   # token ids, fixed at the first server (the same in every arm)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def timed_start(server: LocalLlamaServer, timeout_s: float) -> float:
    server.ready_poll_s = 0.01
    t0 = time.monotonic()
    server.start(timeout_s)
    return time.monotonic() - t0


def completions(server: LocalLlamaServer, run: Run) -> dict[str, float]:
    a = run.args
    with httpx.Client(timeout=600.0) as client:
        if run.prompt is None:
            tokens = client.post(server.url + "/tokenize", json={"content": TEXT}).json()["tokens"]
            if len(tokens) < a.prompt_tokens:
                raise InputError(f"the fixed text has only {len(tokens)} tokens here", field="--prompt-tokens")
            run.prompt = [int(t) for t in tokens[:a.prompt_tokens]]
        client.post(server.url + "/completion", json={"prompt": "Hello", "n_predict": 1}).raise_for_status()
        body = {"prompt": run.prompt, "n_predict": a.n_predict, "temperature": 0, "cache_prompt": False,
                "ignore_eos": True}
        prefill, decode = [], []
        for _ in range(a.requests):
            reply = client.post(server.url + "/completion", json=body)
            reply.raise_for_status()
            t = reply.json()["timings"]
            prefill.append(float(t["prompt_per_second"]))
            decode.append(float(t["predicted_per_second"]))
    return {"prefill_tok_s": statistics.median(prefill), "decode_tok_s": statistics.median(decode)}


def one_arm(arm: Arm, run: Run) -> dict[str, Any]:
    a = run.args
    extra = ["-np", "1", "-c", str(a.ctx), *arm.server_args()]
    with arm_host(arm, run.found, run.paths):
        pagecache.drop(run.model)
        cold_resident = pagecache.resident_fraction(run.model)
        t0 = time.monotonic()
        with served_model(arm, run.model, run.found, run.paths, run.run_dir) as served:
            stage_s = time.monotonic() - t0
            cold = LocalLlamaServer(served, threads=a.threads, extra_args=extra)
            try:
                load_cold = stage_s + timed_start(cold, a.start_timeout)
            finally:
                cold.stop()
            warm = LocalLlamaServer(served, threads=a.threads, extra_args=extra)
            try:
                load_warm = timed_start(warm, a.start_timeout)
                figures = completions(warm, run)
                assert warm.pid is not None
                mem = read_worker_memory(run.paths, warm.pid, model=run.model, engine="llamacpp")
            finally:
                warm.stop()
    if mem.error is not None or mem.rss_bytes is None:
        raise HostError(f"the server's smaps_rollup could not be read: {mem.error}")
    return {"load_cold_s": round(load_cold, 4), "load_warm_s": round(load_warm, 4), "stage_s": round(stage_s, 4),
            "cold_resident": cold_resident, **{k: round(v, 2) for k, v in figures.items()},
            "rss_mib": round(mem.rss_bytes / MIB, 1), "hugetlb_mib": round((mem.hugetlb_bytes or 0) / MIB, 1),
            "anon_huge_mib": round((mem.anon_huge_bytes or 0) / MIB, 1),
            "file_pmd_mib": round((mem.file_pmd_bytes or 0) / MIB, 1),
            "locked_mib": round((mem.locked_bytes or 0) / MIB, 1), "load1": os.getloadavg()[0]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", default="all", help="comma-separated changes (see above), or `all`")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; every arm runs once per round (default 5)")
    ap.add_argument("--requests", type=int, default=3, help="timed completions per arm-round, median kept")
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=1000, help="the fixed prompt's length in tokens")
    ap.add_argument("--threads", type=int, default=2, help="llama-server -t")
    ap.add_argument("--ctx", type=int, default=2048, help="llama-server -c (one slot)")
    ap.add_argument("--model-file", default="default", help="a GGUF path, or `default` (the bundled model)")
    ap.add_argument("--readahead-kb", type=int, help="arm B of `readahead` (default 128, 8192 if 128 found)")
    ap.add_argument("--resamples", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start-timeout", type=float, default=300.0, help="seconds a server may take to load")
    ap.add_argument("--json", action="store_true", help="print the JSON report instead of the tables")
    ap.add_argument("--out", type=Path, help="also write the JSON report (every round) to this file; it holds "
                    "the rounds so far while the run goes on")
    ap.add_argument("--copy-dir", type=Path, default=Path("/var/tmp"),
                    help="where the private copy of the model goes (default /var/tmp)")
    ap.add_argument("--no-copy", action="store_true", help="serve the model file itself (see above)")
    ap.add_argument("--restore", action="store_true", help="put back what a killed run left, then exit")
    args = ap.parse_args(argv)
    checks = [("--rounds", args.rounds, 1, 100), ("--requests", args.requests, 1, 20),
              ("--n-predict", args.n_predict, 1, 4096), ("--threads", args.threads, 1, 256),
              ("--ctx", args.ctx, 64, 131072), ("--prompt-tokens", args.prompt_tokens, 1, args.ctx - args.n_predict),
              ("--resamples", args.resamples, 2000, 200000)]
    for flag, value, low, high in checks:
        if not low <= value <= high:
            raise InputError(f"must be within [{low}, {high}], got {value}", field=flag)
    return args


def plan_changes(args: argparse.Namespace, found: FoundHost, paths: HostPaths,
                 model: Path) -> tuple[dict[str, Arm], dict[str, tuple[str, str]], dict[str, str]]:
    limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    hugetlbfs = "hugetlbfs" in (paths.proc("filesystems").read_text())
    arms, changes, skipped = catalogue(
        found, args.readahead_kb, hugetlbfs=hugetlbfs,
        mlock_why_not=mlock_problem(model.stat().st_size, None if limit == resource.RLIM_INFINITY else limit,
                                    os.geteuid() == 0))
    wanted = list(changes) if args.changes == "all" else [c for c in args.changes.split(",") if c]
    for name in wanted:
        if name in skipped:
            raise InputError(f"{name} cannot run here: {skipped[name]}", field="--changes")
        if name not in changes:
            raise InputError(f"unknown change {name!r} (known: {', '.join([*changes, *skipped])})", field="--changes")
    chosen = {n: (changes[n].a, changes[n].b) for n in wanted}
    used = {arm for pair in chosen.values() for arm in pair}
    return {n: arm for n, arm in arms.items() if n in used}, chosen, skipped


def touched_keys(found: FoundHost) -> list[str]:
    keys = ["thp:enabled", "hugepages:hugepages-2048kB/nr_hugepages", "mounts:hugetlbfs"]
    return keys + ([f"block:{found.disk}/read_ahead_kb"] if found.disk else [])


def run_rounds(run: Run, arms: dict[str, Arm], snapshot: dict[str, str],
               state_dirs: list[Path]) -> list[dict[str, Any]]:
    names, rows = list(arms), []
    for r in range(run.args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            check_untouched(snapshot, run.paths, [], state_dirs)
            row = {"round": r, "arm": name, **one_arm(arms[name], run)}
            rows.append(row)
            if run.args.out:  # every round as it comes: a run stopped early still leaves its figures
                run.args.out.write_text(json.dumps({"partial": True, "rounds": rows}, indent=1) + "\n")
            say(f"round {r + 1}/{run.args.rounds} {name}: " + ", ".join(
                f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float)))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise HostError("os_effects sets THP, the hugepage pool, read_ahead_kb and mounts hugetlbfs: run as root")
    paths = HostPaths.live()
    where = run_dir(paths)
    if args.restore:
        done = restore_found(paths, where)
        say("restored: " + ("; ".join(done) if done else "nothing was left"))
        if any("left alone" in line for line in done):
            say("some values were changed by someone else after the run set them: left as they are")
        return 0
    check_not_tuned(DEFAULT_STATE_DIR)   # an applied policy could re-apply THP mid-arm, and A would not be "found"
    state_dirs = [DEFAULT_STATE_DIR] if DEFAULT_STATE_DIR.is_dir() else []
    if open_transactions(state_dirs):
        raise HostError("a hosttune journal transaction is open: " + "; ".join(open_transactions(state_dirs)))
    refuse_if_left(where)
    source = resolve_model(args.model_file)
    with private_copy(source, None if args.no_copy else args.copy_dir) as model:
        return measure(args, paths, where, state_dirs, source, model)


@contextmanager
def private_copy(model: Path, copy_dir: Path | None) -> Iterator[Path]:
    if copy_dir is None:
        yield model
        return
    tmp = Path(tempfile.mkdtemp(prefix="os-effects-", dir=copy_dir))
    try:
        copy = tmp / model.name
        shutil.copyfile(model, copy)
        with open(copy, "rb+") as f:
            os.fsync(f.fileno())  # dirty pages cannot be dropped: the cold loads need them written
        say(f"private copy of the model: {copy}")
        yield copy
    finally:
        shutil.rmtree(tmp)


def measure(args: argparse.Namespace, paths: HostPaths, where: Path, state_dirs: list[Path], source: Path,
            model: Path) -> int:
    found = find_host(paths, queue_disk_of_file(paths, model))  # the queue file reads use (dm/md: its own)
    arms, changes, skipped = plan_changes(args, found, paths, model)
    snapshot = take_snapshot(paths, [])
    load_before = os.getloadavg()
    say(f"os_effects: {model} ({model.stat().st_size / MIB:.0f} MiB); host as found {found.to_json()}; "
        f"load average {load_before[0]:.2f}; arms {', '.join(arms)}; not here: {skipped or 'none'}")
    keep_found(found, where, copy=None if model == source else model.parent)
    run = Run(args, paths, model, found, where)
    try:
        rows = run_rounds(run, arms, snapshot, state_dirs)
    finally:
        left = take_snapshot(paths, [])
        diff = diff_snapshot(snapshot, left)
        if not diff:
            forget_found(where)
        for key in touched_keys(found):
            say(f"host {key}: as found {snapshot.get(key)!r}, as left {left.get(key)!r}")
        say("host left as found" if not diff else "HOST NOT AS FOUND: " + "; ".join(diff))
    report = {"model": str(source), "served_copy": None if model == source else str(model),
              "found": found.to_json(), "skipped": skipped,
              "arms": {n: {"what": a.describe(), "args": a.server_args()} for n, a in arms.items()},
              "spec": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "prompt_tokens": len(run.prompt or []), "rounds": rows,
              "load_avg": {"before": list(load_before), "after": list(os.getloadavg())},
              "host": {"found": {k: snapshot.get(k) for k in touched_keys(found)},
                       "left": {k: left.get(k) for k in touched_keys(found)}, "restored": not diff, "diff": diff},
              **build_report(rows, changes, resamples=args.resamples, seed=args.seed)}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report, sys.stdout)
        print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    return 0 if not diff else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still puts the host back (finally)
    try:
        sys.exit(main())
    except HostTuneError as e:
        print(f"os_effects: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
