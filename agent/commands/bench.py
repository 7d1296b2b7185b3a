"""`hosttune bench`: load-generate against the gateway or any OpenAI-compatible URL and report what users feel."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.bench.compare_cli import register_compare, run_compare
from agent.errors import InputError

HELP = """\
Send a realistic request mix (short chat, long-prompt summarisation, long generation; built-in texts) to an
OpenAI-compatible server and report output tokens/s, requests/s, time to first token and inter-token latency
(p50/p95/p99) and errors, per load level.

Load levels: closed loop (--concurrency 1,2,4: that many clients, each sending its next request when the last
finished) and/or open loop (--rate 0.5,1,2: Poisson arrivals per second, regardless of how fast the server
is). Each level ends after --duration seconds or --requests requests, whichever comes first; requests in flight
then are awaited. A progress line goes to stderr.

--scenario chat|multiturn|rag|burst sends a seeded workload shaped like real serving instead of the mix (shared
system prompt; conversations resending their history; long retrieved-passage prompts; a burst above capacity),
and --requests FILE.jsonl replays your own traffic (format: docs/bench.md). With --slo-ttft-ms / --slo-itl-ms
each level also reports goodput: requests/s (and their output tokens/s) that met both SLOs.

--sweep runs the grid over engine knobs that need a restart (one private llama-server per point, on the bundled
or --model-file model) and reports the best point that meets --slo-ttft-p95-ms: the baseline for the controller.
"""

EPILOG = """\
examples:
  hosttune bench --url http://127.0.0.1:8080 --concurrency 1,2,4 --duration 30
  hosttune bench --url http://127.0.0.1:8080 --rate 0.5,1,2 --requests 50 --json --out bench.json
  hosttune bench --url http://127.0.0.1:8080 --mix generate --max-tokens 128 --plot bench.png
  hosttune bench --url http://127.0.0.1:8080 --scenario multiturn --duration 60 --slo-ttft-ms 2000 --slo-itl-ms 150
  hosttune bench --url http://127.0.0.1:8080 --requests traffic.jsonl --json --out replay.json
  hosttune bench --sweep "np=1,2,4;ub=128,512" --concurrency 4 --duration 20 --slo-ttft-p95-ms 800
  sudo hosttune bench --compare --scenario multiturn --rounds 5 --duration 20 --out cmp.json --plot cmp.png
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="load-generate against an OpenAI-compatible URL (or sweep engine knobs)",
                       description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", metavar="URL", help="server base URL (the gateway, llama-server, any OpenAI API)")
    p.add_argument("--api", choices=["chat", "completions", "llamacpp"], default="chat",
                   help="/v1/chat/completions (default), /v1/completions or llama.cpp's /completion")
    p.add_argument("--model", help="model name to send (servers with one model ignore it)")
    p.add_argument("--concurrency", metavar="N,N,...", help="closed-loop levels (default 1,2,4 if no --rate)")
    p.add_argument("--rate", metavar="R,R,...", help="open-loop levels: Poisson arrivals per second")
    p.add_argument("--duration", type=float, default=30.0, metavar="S", help="seconds per level (default 30)")
    p.add_argument("--requests", type=_requests_value, metavar="N|FILE.jsonl",
                   help="requests per level (ends the level early), or a FILE.jsonl of requests to replay")
    p.add_argument("--scenario", metavar="NAME", help="chat, multiturn, rag or burst (instead of --mix)")
    p.add_argument("--slo-ttft-ms", type=float, metavar="MS", help="TTFT SLO for goodput")
    p.add_argument("--slo-itl-ms", type=float, metavar="MS", help="per-request ITL p95 SLO for goodput")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="unmeasured requests first (default 1)")
    p.add_argument("--mix", metavar="KIND=W,...", help="chat/summarize/generate weights (default 6/2/2)")
    p.add_argument("--long-prompt-words", type=int, default=400, metavar="N",
                   help="document length of summarize requests (default 400 words)")
    p.add_argument("--max-tokens", type=int, metavar="N", help="cap every request's output tokens")
    p.add_argument("--ignore-eos", action="store_true", help="ask the server to generate the full max_tokens")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S", help="per-request timeout (default 300)")
    p.add_argument("--max-outstanding", type=int, default=256, metavar="N",
                   help="open loop: most requests in flight; later arrivals count as dropped (default 256)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the request mix (default 1)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--out", type=Path, metavar="FILE.json", help="also write the JSON report here")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="write a PNG (needs matplotlib: extra `bench`)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    g = p.add_argument_group("sweep")
    g.add_argument("--sweep", metavar="GRID", help='engine knob grid, e.g. "np=1,2,4;ub=128,512"')
    g.add_argument("--model-file", default="default", metavar="PATH", help="model for --sweep (default: bundled)")
    g.add_argument("--threads", type=int, default=2, help="llama-server -t for --sweep (default 2)")
    g.add_argument("--base-knobs", metavar="KNOB=V;...", help='knobs fixed for every point, e.g. "c=4096"')
    g.add_argument("--slo-ttft-p95-ms", type=float, metavar="MS", help="TTFT p95 the best point must meet")
    register_compare(p)
    p.set_defaults(func=run)


def _requests_value(text: str) -> int | Path:
    """--requests N (requests per level) or --requests FILE.jsonl (a file to replay). Anything else (10.5, a
    typo) is a usage error here, not a "cannot read file" later."""
    if text.strip().lstrip("+-").isdigit():
        return int(text)
    path = Path(text)
    if text.endswith(".jsonl") or path.is_file():
        return path
    raise argparse.ArgumentTypeError(f"expected an integer or a FILE.jsonl, got {text!r}")


def _int_list(text: str | None, flag: str) -> list[int]:
    if not text:
        return []
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"expected integers like 1,2,4, got {text!r}", field=flag) from None
    if not values or any(v < 1 for v in values):
        raise InputError("levels must be >= 1", field=flag)
    return values


def _float_list(text: str | None, flag: str) -> list[float]:
    if not text:
        return []
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"expected numbers like 0.5,1,2, got {text!r}", field=flag) from None
    if not values or any(v <= 0 for v in values):
        raise InputError("rates must be > 0", field=flag)
    return values


def _check(args: argparse.Namespace) -> None:
    if args.duration is not None and args.duration <= 0:
        raise InputError("must be > 0", field="--duration")
    requests = args.requests if isinstance(args.requests, int) else None
    for flag, value in (("--requests", requests), ("--max-tokens", args.max_tokens),
                        ("--long-prompt-words", args.long_prompt_words), ("--max-outstanding", args.max_outstanding)):
        if value is not None and value < 1:
            raise InputError("must be >= 1", field=flag)
    if args.warmup < 0:
        raise InputError("must be >= 0", field="--warmup")
    if args.timeout <= 0:
        raise InputError("must be > 0", field="--timeout")
    for flag, ms in (("--slo-ttft-ms", args.slo_ttft_ms), ("--slo-itl-ms", args.slo_itl_ms)):
        if ms is not None and not ms > 0:
            raise InputError("must be > 0", field=flag)
    if args.scenario and isinstance(args.requests, Path):
        raise InputError("give --scenario or a requests file, not both", field="--scenario")
    if args.mix and (args.scenario or isinstance(args.requests, Path)):
        raise InputError("--mix shapes the built-in mix: leave it out with --scenario or a requests file",
                         field="--mix")
    if args.url is None and not args.sweep:
        raise InputError("give the server to load (--url URL) or a --sweep grid", field="--url")


def run(args: argparse.Namespace) -> int:
    from agent.bench.corpus import MixSpec, parse_mix
    from agent.bench.load import Bounds, Progress, Target
    from agent.bench.report import plot, print_table
    from agent.bench.requests_file import load_requests
    from agent.bench.runner import bench, bench_scenario, preflight
    from agent.bench.scenarios import check_level, spec_of

    if args.compare:
        return run_compare(args)
    _check(args)
    requests_file = args.requests if isinstance(args.requests, Path) else None
    if args.scenario:
        spec_of(args.scenario)
    concurrency = _int_list(args.concurrency, "--concurrency")
    rates = _float_list(args.rate, "--rate")
    if requests_file is not None:
        replay = load_requests(requests_file)  # a bad file fails here, before the server is even asked
        if replay.timed and (concurrency or rates):
            raise InputError("the requests carry at_s arrival times: leave out --concurrency/--rate",
                             path=requests_file, field="--requests")
    shaped = bool(args.scenario) or requests_file is not None
    if not concurrency and not rates and not shaped:
        concurrency = [1, 2, 4]
    if args.scenario:
        for c, r in [(c, None) for c in concurrency] + [(None, r) for r in rates]:
            check_level(args.scenario, args.duration, c, r)
    mix = MixSpec(parse_mix(args.mix), long_prompt_words=args.long_prompt_words, max_tokens=args.max_tokens)
    bounds = Bounds(duration_s=args.duration, requests=None if requests_file else args.requests)
    progress = Progress(enabled=not args.quiet)
    slo = (None if args.slo_ttft_ms is None else args.slo_ttft_ms / 1000,
           None if args.slo_itl_ms is None else args.slo_itl_ms / 1000)

    def measure(url: str) -> dict[str, Any]:
        target = Target(url=url.rstrip("/"), api=args.api, model=args.model, ignore_eos=args.ignore_eos,
                        timeout_s=args.timeout)
        if shaped:
            return bench_scenario(target, args.scenario, requests_file, concurrency, rates, bounds, seed=args.seed,
                                  warmup=args.warmup, progress=progress, slo=slo)
        return bench(target, mix, concurrency, rates, bounds, seed=args.seed, warmup=args.warmup,
                     progress=progress, slo=slo)

    if args.sweep:
        report = _sweep(args, measure)
    else:
        preflight(args.url)
        report = measure(args.url)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot and not args.sweep:
        note = plot(report["levels"], args.plot, f"hosttune bench: {args.url} ({args.api})")
        if note:
            print(note, file=sys.stderr)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.sweep:
        _print_sweep(report)
    else:
        print_table(report["levels"])
    return 0


def _sweep(args: argparse.Namespace, measure: Any) -> dict[str, Any]:
    from agent.bench.sweep import LocalSweepControl, parse_grid, run_sweep
    from agent.model_files import resolve_model

    grid = parse_grid(args.sweep)
    base = parse_grid(args.base_knobs)[0] if args.base_knobs else {}
    control = LocalSweepControl(resolve_model(args.model_file), threads=args.threads, base_knobs=base)
    slo = args.slo_ttft_p95_ms / 1000 if args.slo_ttft_p95_ms else None

    def on_point(point: dict[str, Any]) -> None:
        if not args.quiet:
            knobs = " ".join(f"{k}={v}" for k, v in point["knobs"].items())
            print(f"sweep point {knobs}: {point.get('error') or 'done'} ({point['wall_s']:.1f} s)", file=sys.stderr)

    return run_sweep(grid, control, measure, slo, on_point)


def _print_sweep(report: dict[str, Any]) -> None:
    from agent.render import table

    rows = []
    for p in report["points"]:
        knobs = " ".join(f"{k}={v}" for k, v in p["knobs"].items())
        if p.get("error"):
            rows.append([knobs, "-", "-", "-", p["error"][:60]])
        for lv in p["levels"]:
            p95 = lv["ttft_s"]["p95"]
            rows.append([knobs, lv["label"], f"{lv['tokens_per_s']:.1f}",
                         "-" if p95 is None else f"{p95 * 1000:.0f}", sum(lv["errors"].values())])
    table(["knobs", "level", "tok/s", "ttft p95 ms", "errors"], rows)
    best = report["best"]
    print(f"sweep wall time {report['wall_s']:.1f} s; best: "
          + (f"{best['knobs']} at {best['label']}: {best['tokens_per_s']:.1f} tok/s" if best else "none met the SLO"))
