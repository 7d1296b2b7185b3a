"""hosttune controller: what the adaptive controller decided and why (`decisions`), and the control law replayed
over a recorded telemetry trace (`replay`) to see what it would decide, without touching anything."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from agent.commands.options import state_dir_options
from agent.errors import InputError
from agent.render import print_json, table

EPILOG = """\
examples:
  hosttune controller decisions                     the daemon's decisions (state dir's controller/decisions.jsonl)
  hosttune controller decisions --lever knobs --json
  hosttune controller decisions --lever os          OS trials (THP, numa_balancing, governor): kept or undone
  hosttune controller replay tests/fixtures/traces/synthetic-knobs.json --ttft-p95-ms 1000 \\
      --knobs parallel=1,ubatch=512 --seconds 600
"""


def register(sub: Any) -> None:
    p = sub.add_parser("controller", help="the adaptive controller's decisions; replay its law on a trace",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = p.add_subparsers(dest="controller_command", metavar="ACTION", required=True)
    d = cmds.add_parser("decisions", parents=[state_dir_options()], help="decisions with their measurements",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--file", type=Path, help="a decisions.jsonl (default: STATE_DIR/controller/decisions.jsonl)")
    d.add_argument("--lever", choices=["admission", "knobs", "os"], help="only this lever's decisions (os: OS "
                   "trials)")
    d.add_argument("--last", type=int, metavar="N", help="only the last N")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=run_decisions)
    r = cmds.add_parser("replay", help="run the control law over a recorded trace and print its decisions",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("trace", type=Path)
    r.add_argument("--ttft-p95-ms", type=float, required=True)
    r.add_argument("--itl-p95-ms", type=float)
    r.add_argument("--knobs", metavar="K=V,...", help="starting knobs; follows the trace's segments as the law "
                   "changes them (default: the first segment's, open loop)")
    r.add_argument("--limit", type=int, help="starting admission limit (default: the trace's)")
    r.add_argument("--seconds", type=float, help="how long to run a knob replay (default: the trace's length)")
    r.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a controller setting, e.g. --set cooldown_s=30 (see docs/controller.md)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=run_replay)


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).astimezone().strftime("%H:%M:%S")


def _knobs(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in d.items() if v is not None) or "-"


def _print(decisions: list[Any]) -> None:
    rows = []
    for d in decisions:
        b, a = d.measured_before or {}, d.measured_after or {}
        tps = f"{b.get('tokens_per_s', '-')}" + (f" -> {a.get('tokens_per_s')}" if a else "")
        p95 = b.get("service_ttft_p95_ms")
        rows.append([d.id, _when(d.at), d.lever, d.action, f"{_knobs(d.before)} -> {_knobs(d.after)}", d.outcome,
                     tps, "-" if p95 is None else p95, (d.outcome_reason or d.reason)[:70]])
    table(["id", "at", "lever", "action", "change", "outcome", "tok/s", "ttft p95 ms", "why"], rows)


def run_decisions(args: argparse.Namespace) -> int:
    from agent.control.controller import decisions_path
    from agent.control.decisions import read_decisions

    path = args.file or decisions_path(Path(args.state_dir))
    if not path.exists():
        raise InputError("no controller decisions yet (the daemon's controller writes them)", path=path)
    ds = read_decisions(path)
    if args.lever:
        ds = [d for d in ds if d.lever == args.lever]
    if args.last is not None:
        if args.last < 1:
            raise InputError("must be >= 1", field="--last")
        ds = ds[-args.last:]
    if args.json:
        print_json([d.model_dump(mode="json") for d in ds])
    else:
        _print(ds)
    return 0


def _parse_pairs(text: str | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise InputError(f"expected NAME=VALUE, got {part!r}", field=flag)
        v = value.strip()
        out[name.strip()] = int(v) if v.lstrip("-").isdigit() else (None if v in ("", "none") else v)
    return out


def run_replay(args: argparse.Namespace) -> int:
    import json

    from pydantic import ValidationError

    from agent.control.config import ControllerConfig
    from agent.control.core import ControlCore
    from agent.control.trace import TraceWorld, load_trace, replay_ticks, run_world

    trace = load_trace(args.trace)
    overrides: dict[str, Any] = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"expected FIELD=VALUE, got {item!r}", field="--set")
        try:
            overrides[name] = json.loads(value)
        except ValueError:
            overrides[name] = value
    try:
        cfg = ControllerConfig.model_validate({"ttft_p95_ms": args.ttft_p95_ms, "itl_p95_ms": args.itl_p95_ms,
                                               **overrides})
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(err["msg"], field="--set " + ".".join(str(x) for x in err["loc"])) from None
    first = trace.segments[0]
    limit = args.limit or (first.ticks[0].limit if first.ticks else 1)
    if args.knobs:
        knobs = _parse_pairs(args.knobs, "--knobs")
        try:
            trace.segment(knobs)
        except KeyError as e:
            raise InputError(str(e.args[0]), field="--knobs") from None
        core = ControlCore(cfg, knobs, limit, 0.0)
        world = TraceWorld(trace, knobs)
        seconds = args.seconds or sum(s.duration for s in trace.segments)
        try:
            versions = run_world(core, world, seconds)
        except KeyError as e:
            raise InputError(f"the law stepped to knobs the trace has no segment for: {e.args[0]} "
                             "(narrow the ladder with --set)", field="--knobs") from None
    else:
        core = ControlCore(cfg.model_copy(update={"slow_enabled": False}), dict(first.knobs), limit, 0.0)
        versions = replay_ticks(core, first.ticks)
    latest: dict[int, Any] = {}
    for d in versions:
        latest[d.id] = d
    ds = [latest[k] for k in sorted(latest)]
    if args.json:
        print_json({"decisions": [d.model_dump(mode="json") for d in ds], "final": core.status()})
    else:
        _print(ds)
        st = core.status()
        print(f"final: knobs {_knobs(st['knobs'])}, limit {st['limit']}, phase {st['phase']}")
    return 0
