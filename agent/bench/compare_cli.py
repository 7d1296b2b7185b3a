"""The `hosttune bench --compare` flags (register_compare) and the run (run_compare): resolve the policy, the model
and the SLO, snapshot the host, build both arms, run the alternating rounds, print/write the report."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from agent.errors import HostError, InputError

COMPARE_HELP = """\
--compare: one load, alternating rounds: A = llama-server at its defaults on the untouched host (checked before
every A round: the values hosttune tunes as found at the start, no open journal transaction), B = `hosttune
daemon` with --policy applied and its controller converged (a converge phase first; every B round then starts
with the knobs it settled on). Reports goodput at the SLO, TTFT/ITL p50/p95, tokens/s and errors per round, and
the B/A ratios with 95% bootstrap intervals. Needs root (B tunes the host; it is reverted after every B round).
"""
MIX = "mix"   # the built-in request mix (--mix, --concurrency): the load when no --scenario is given


def register_compare(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compare", COMPARE_HELP)
    g.add_argument("--compare", action="store_true", help="A/B: untouched host + llama-server defaults vs the policy")
    g.add_argument("--rounds", type=int, default=5, metavar="N", help="rounds per arm (default 5, at least 5)")
    g.add_argument("--policy", metavar="P", help="policy name or path for B (default: the shipped default here)")
    g.add_argument("--converge-timeout", type=float, default=600.0, metavar="S",
                   help="longest converge phase before the B rounds (default 600; 0: skip, serve the policy)")
    g.add_argument("--resamples", type=int, default=5000, metavar="N", help="bootstrap resamples (default 5000)")
    g.add_argument("--work-dir", type=Path, metavar="DIR", help="logs, the B daemon's state (default: a new tmp dir)")


def _one_level(text: str | None, flag: str, what: str, low: float, high: float) -> float | None:
    """The one load level a compare round runs at (--compare takes a single value, not a list)."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--compare takes one {what}, got {text!r}", field=flag) from None
    if not low <= value <= high:
        raise InputError(f"must be within [{low:g}, {high:g}]", field=flag)
    return value


def _one_int(text: str | None, default: int) -> int:
    value = _one_level(text, "--concurrency", "concurrency level", 1, 512)
    if value is None:
        return default
    if value != int(value):
        raise InputError(f"--compare takes one concurrency level, got {text!r}", field="--concurrency")
    return int(value)


def _one_rate(text: str | None) -> float | None:
    return _one_level(text, "--rate", "arrival rate", 1e-3, 1000)


def run_compare(args: argparse.Namespace) -> int:
    from agent.bench.compare import CompareSpec, run_compare_loop
    from agent.bench.compare_arms import DaemonArm, DefaultsArm
    from agent.bench.hostsnap import check_not_tuned, check_untouched, check_work_dir, take_snapshot
    from agent.bench.scenarios import check_level, spec_of
    from agent.config import DEFAULT_STATE_DIR
    from agent.hostfs import HostPaths
    from agent.inspect import collect
    from agent.model_files import resolve_model
    from agent.policy.loader import default_policy_name, find_policy, load_policy

    scenario = args.scenario or MIX
    if isinstance(args.requests, Path):
        raise InputError("--compare runs a named --scenario (or the mix), not a requests file", field="--requests")
    if scenario == MIX:
        if args.rate:
            raise InputError("--compare runs the mix closed loop at one --concurrency", field="--rate")
        concurrency: int | None = _one_int(args.concurrency, 8)
        rate: float | None = None
    else:
        spec_of(scenario)
        concurrency = _one_int(args.concurrency, 1) if args.concurrency else None
        rate = _one_rate(args.rate)
        check_level(scenario, args.duration, concurrency, rate)
    if args.resamples < 2000 or args.resamples > 200000:
        raise InputError("must be within [2000, 200000]", field="--resamples")
    paths = HostPaths.live()
    facts = collect(paths)
    policy_ref = args.policy or default_policy_name(facts)
    source = find_policy(policy_ref)
    policy = load_policy(source, facts).policy
    slo = policy.slo
    ttft_ms = args.slo_ttft_ms if args.slo_ttft_ms is not None else (slo.ttft_p95_ms if slo else None)
    itl_ms = args.slo_itl_ms if args.slo_itl_ms is not None else (slo.itl_p95_ms if slo else None)
    spec = CompareSpec(scenario=scenario, rounds=args.rounds, duration_s=args.duration,
                       ttft_slo_s=None if ttft_ms is None else ttft_ms / 1000,
                       itl_slo_s=None if itl_ms is None else itl_ms / 1000,
                       converge_timeout_s=args.converge_timeout, resamples=args.resamples, seed=args.seed)
    spec.check()
    if os.geteuid() != 0:
        raise HostError("bench --compare applies the policy to this host in its B arm: run it as root")
    check_not_tuned(DEFAULT_STATE_DIR)
    model = resolve_model(args.model_file)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="hosttune-compare-"))
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_work_dir(work, os.geteuid())
    arm_b = DaemonArm(source, policy_ref, model, work)
    sysctl_keys = sorted(policy.sysctl)
    state_dirs = [arm_b.state_dir] + ([DEFAULT_STATE_DIR] if DEFAULT_STATE_DIR.is_dir() else [])
    say = _progress(args.quiet)
    say(f"compare: work dir {work}; snapshot of {len(sysctl_keys)} policy sysctls, THP, hugepage pools, block "
        f"queues, governors, hugetlbfs mounts")
    snapshot = take_snapshot(paths, sysctl_keys)

    def precheck() -> None:
        check_untouched(snapshot, paths, sysctl_keys, state_dirs)

    def restore() -> None:
        _restore(arm_b.state_dir, say)

    load_before = os.getloadavg()
    load = round_load(args, scenario, concurrency, rate)
    report = run_compare_loop(spec, DefaultsArm(model, work), arm_b, load, precheck, restore, say)
    report.update({"policy": policy_ref, "model": str(model), "concurrency": concurrency, "rate": rate,
                   "slo": {"ttft_ms": ttft_ms, "itl_ms": itl_ms,
                           "source": "flags" if args.slo_ttft_ms or args.slo_itl_ms else "policy slo:"},
                   "snapshot": snapshot, "work_dir": str(work),
                   "load_avg": {"before": list(load_before), "after": list(os.getloadavg())}})
    return write_outputs(report, args)


def _progress(quiet: bool) -> Any:
    def say(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)
    return say


def round_load(args: argparse.Namespace, scenario: str, concurrency: int | None, rate: float | None) -> Any:
    from agent.bench.corpus import MixSpec, parse_mix
    from agent.bench.load import Bounds, LevelRun, Progress, Target
    from agent.bench.runner import run_levels
    from agent.bench.scenarios import run_scenario

    if scenario != MIX:
        def scenario_load(url: str) -> LevelRun:
            target = Target(url=url.rstrip("/"), api=args.api, model=args.model, ignore_eos=args.ignore_eos,
                            timeout_s=args.timeout)
            return run_scenario(target, scenario, seed=args.seed, duration_s=args.duration,
                                concurrency=concurrency, rate=rate)
        return scenario_load
    assert concurrency is not None

    mix = MixSpec(parse_mix(args.mix), long_prompt_words=args.long_prompt_words, max_tokens=args.max_tokens)
    bounds = Bounds(duration_s=args.duration, requests=args.requests)

    def load(url: str) -> LevelRun:
        target = Target(url=url.rstrip("/"), api=args.api, model=args.model, ignore_eos=args.ignore_eos,
                        timeout_s=args.timeout)
        runs = asyncio.run(run_levels(target, mix, [concurrency], [], bounds, seed=args.seed, warmup=args.warmup,
                                      progress=Progress(enabled=False)))
        return runs[0]
    return load


def _restore(state_dir: Path, say: Any) -> None:
    """After a failure: the B daemon reverts on SIGTERM; if it could not (killed), revert from its journal."""
    from agent.tuning.state import StateDir

    if not StateDir(state_dir).journal_path.exists():
        return
    argv = [sys.executable, "-m", "agent", "revert", "--state-dir", str(state_dir)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    say(f"restore: {' '.join(argv[1:])}: exit {done.returncode}: {done.stdout.strip()[-400:]}")


def write_outputs(report: dict[str, Any], args: argparse.Namespace, out: TextIO | None = None) -> int:
    from agent.bench.compare_plot import plot_compare
    from agent.bench.compare_table import print_compare

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        note = plot_compare(report, args.plot)
        if note:
            print(note, file=sys.stderr)
    if args.json:
        json.dump(report, out or sys.stdout, indent=2)
        (out or sys.stdout).write("\n")
    else:
        print_compare(report, out)
    return 0
