"""hosttune worker: run the inference worker in the foreground (placed, supervised), or show its status.

`worker run POLICY` resolves the policy's worker section against this host, places the worker (NUMA node, CPUs,
threads — and says why), sizes unset knobs with the fit advisor, starts it under the supervisor and keeps it
alive until Ctrl-C or SIGTERM, then stops it cleanly. It exits 1 if the worker ends up `failed` (crash loop).
`worker status` reads the state file the supervisor keeps under the state dir.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.commands.fit import host_facts
from agent.commands.options import host_root_options, state_dir_options
from agent.errors import HostTuneError, InputError
from agent.fsio import format_cpu_list, load_json
from agent.hostfs import HostPaths
from agent.policy.model import Policy, WorkerSpec
from agent.render import print_json
from agent.worker.prepare import PreparedWorker, prepare_worker
from agent.worker.privdrop import DEFAULT_WORKER_USER, resolve_run_as
from agent.worker.status import WorkerState, WorkerStatus
from agent.worker.supervisor import RestartPolicy, Supervisor

if TYPE_CHECKING:
    from agent.inspect.models import HostFacts
    from agent.policy.loader import LoadedPolicy

EPILOG = """\
examples:
  hosttune worker run policies/default.yaml           serve the policy's worker until Ctrl-C
  hosttune worker run my.yaml --port 8090 --prewarm   override the port, read the model into page cache first
  hosttune worker status                              state, pid, placement, restarts, last exit reason
  hosttune worker status --json
"""


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="run or inspect the supervised inference worker",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    wsub = p.add_subparsers(dest="worker_command", metavar="SUBCOMMAND", required=True)
    run = wsub.add_parser("run", help="place, start and supervise the worker in the foreground",
                          parents=[host_root_options(), state_dir_options()])
    run.add_argument("policy", metavar="POLICY", help="policy name or YAML file with a worker: section")
    run.add_argument("--port", type=int, help="override worker.port")
    run.add_argument("--model", help="override worker.model (a GGUF path or `default`)")
    run.add_argument("--prewarm", action="store_true", default=None,
                     help="read the model into the page cache before each start")
    run.add_argument("--cold", action="store_true",
                     help="drop the model's page-cache pages before each start (measure a cold load)")
    run.add_argument("--binding", choices=["auto", "numactl", "bindexec"], default="auto",
                     help="how to bind CPUs and memory (auto: numactl when installed, else the exec shim)")
    run.add_argument("--allow-remote", action="store_true",
                     help="let worker.host be a non-loopback address (the worker has no auth of its own)")
    run.add_argument("--user", default=DEFAULT_WORKER_USER,
                     help=f"unprivileged user the worker runs as when hosttune is root ({DEFAULT_WORKER_USER}; "
                     "nobody when that user does not exist)")
    run.add_argument("--ready-timeout", type=float, default=300.0, metavar="S",
                     help="seconds a start may take to answer its health check (300)")
    run.add_argument("--max-crashes", type=int, default=5, metavar="K",
                     help="K crashes within --crash-window seconds mean a crash loop: give up (5)")
    run.add_argument("--crash-window", type=float, default=120.0, metavar="T", help="seconds (120)")
    run.add_argument("--backoff", type=float, default=1.0, metavar="S",
                     help="first restart delay; doubles per recent crash up to 30 s (1)")
    run.add_argument("--stop-timeout", type=float, default=10.0, metavar="S",
                     help="SIGTERM grace before SIGKILL (10)")
    run.set_defaults(func=cmd_run)
    status = wsub.add_parser("status", help="the worker's state from the state dir", parents=[state_dir_options()])
    status.add_argument("--json", action="store_true", help="the full status as JSON")
    status.set_defaults(func=cmd_status)


def load_worker_policy(ref: str, facts: HostFacts | None) -> tuple[Policy, LoadedPolicy]:
    """The resolved policy (extends, when, computed values) and the loader's result (for file:line lookups)."""
    from agent.policy.loader import load_policy

    loaded = load_policy(ref, facts)
    return loaded.policy, loaded


def cmd_run(args: argparse.Namespace) -> int:
    paths = HostPaths.from_options(args.procfs, args.sysfs, args.rootfs).check()
    facts = host_facts(args)
    policy, loaded = load_worker_policy(args.policy, facts)
    if policy.worker is None:
        raise InputError("the policy has no worker: section", path=loaded.source,
                         field="worker")
    spec: WorkerSpec = policy.worker
    overrides = {k: v for k, v in (("port", args.port), ("model", args.model)) if v is not None}
    if overrides:
        spec = WorkerSpec.model_validate({**spec.model_dump(), **overrides})
    headroom = policy.slo.memory_headroom_pct if policy.slo is not None else 10.0
    try:
        prepared = prepare_worker(spec, facts, paths=paths, headroom_pct=headroom, prefer_binding=args.binding,
                                  allow_remote=args.allow_remote, run_as=resolve_run_as(args.user))
        prepared.build(prepared.spec)  # surface argv errors (reserved flags, cache types) before starting
    except HostTuneError as e:
        raise loaded.locate(e) from None
    restart_policy = RestartPolicy(backoff_initial_s=args.backoff, crashloop_count=args.max_crashes,
                                   crashloop_window_s=args.crash_window, ready_timeout_s=args.ready_timeout,
                                   stop_timeout_s=args.stop_timeout)
    sup = Supervisor(prepared.spec, prepared.build, state_dir=Path(args.state_dir), policy=restart_policy,
                     paths=paths, prewarm=args.prewarm, drop_cache_first=args.cold)
    show_plan(prepared)
    return supervise(sup)


def show_plan(prepared: PreparedWorker) -> None:
    p = prepared.placement
    launch = prepared.build(prepared.spec)
    print(f"worker:    {prepared.spec.engine} {prepared.model or ''}".rstrip())
    print(f"placement: {p.summary()}; binding: {launch.binding.mechanism}"
          + (f"; GPU {p.gpu}" if p.gpu is not None else ""))
    for reason in p.reasons:
        print(f"  why:     {reason}")
    for note in prepared.notes:
        print(f"  note:    {note}")
    print(f"command:   {' '.join(launch.argv)}")
    if prepared.spec.slot_affinity or prepared.spec.cache_prompt is not None:
        print(f"gateway:   slot_affinity {'on' if prepared.spec.slot_affinity else 'off'}, cache_prompt "
              f"{'(client decides)' if prepared.spec.cache_prompt is None else prepared.spec.cache_prompt}")
    sys.stdout.flush()


def supervise(sup: Supervisor) -> int:
    """Run until a signal asks us to stop (exit 0) or the worker fails for good (exit 1)."""
    done = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        done.set()

    def on_state(st: WorkerStatus) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {st.state.value}"
        if st.state == WorkerState.READY:
            line += f": {st.base_url} (pid {st.pid}, loaded in {st.load_seconds}s"
            if st.resident_at_start is not None:
                line += f", model {st.resident_at_start:.0%} in page cache at start"
            line += ")"
        elif st.state == WorkerState.STARTING:
            line += f": pid {st.pid}"
        elif st.reason:
            line += f": {st.reason}"
        print(line, flush=True)
        if st.state == WorkerState.FAILED:
            for tail in st.stderr_tail[-8:]:
                print(f"  stderr:  {tail}", flush=True)
            done.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    sup.add_listener(on_state)
    try:
        sup.start()
        while not done.wait(1.0):
            pass
    finally:
        final = sup.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    if received:
        print(f"stopped on {signal.Signals(received[0]).name} (worker {final.state.value})", flush=True)
        return 0
    return 1  # only a failed worker ends the loop without a signal


def when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_status(args: argparse.Namespace) -> int:
    path = Path(args.state_dir) / "worker" / "state.json"
    raw = load_json(path)
    if raw is None:
        if args.json:
            print_json({"state": "stopped", "state_file": str(path), "never_started": True})
        else:
            print(f"state:     stopped (no worker has run with state dir {args.state_dir})")
        return 0
    try:
        st = WorkerStatus.model_validate(raw)
    except ValueError as e:
        raise InputError(f"unreadable worker state: {str(e).splitlines()[0]}", path=path) from None
    stale = st.state not in (WorkerState.STOPPED, WorkerState.FAILED) and not pid_alive(st.supervisor_pid)
    if args.json:
        print_json({**st.model_dump(mode="json"), "state_file": str(path), "stale": stale})
        return 0
    stale_note = f" (STALE: its supervisor, pid {st.supervisor_pid}, is gone)" if stale else ""
    print(f"state:     {st.state.value}{stale_note} since {when(st.since)}" + (f": {st.reason}" if st.reason else ""))
    print(f"worker:    {st.engine or '-'} pid {st.pid or '-'} at {st.base_url or '-'}; model {st.model or '-'}")
    if st.placement is not None:
        p = st.placement
        print(f"placement: node {p.node if p.node is not None else '-'}, cpus {format_cpu_list(p.cpus) or '-'}, "
              f"{p.threads} threads, binding {st.binding or '-'}")
    print(f"history:   {st.starts} starts, {st.restarts} restarts, {st.crashes} crashes "
          f"({st.recent_crashes} recent); last load {st.load_seconds if st.load_seconds is not None else '-'}s")
    if st.memory is not None:
        print(f"memory:    {st.memory.describe()} (pid {st.memory.pid}, at {when(st.memory.at)})")
    if st.last_exit_reason:
        print(f"last exit: {st.last_exit_reason}")
    if st.state == WorkerState.FAILED:
        for line in st.stderr_tail[-8:]:
            print(f"  stderr:  {line}")
    print(f"logs:      {path.parent}/stderr.log, {path.parent}/events.jsonl")
    return 1 if st.state == WorkerState.FAILED else 0
