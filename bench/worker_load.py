"""Cold vs warm worker load time: llama-server under the supervisor, with the model's pages dropped from the page
cache before each start (cold) or read in beforehand (warm, the supervisor's pre-warm).

    .venv/bin/python bench/worker_load.py [--model default] [--runs 3] [--json]

Load time is spawn to the first 200 from /health. The page-cache residency at spawn is reported next to it, so a
"cold" run that was not cold (another process keeps the file mapped: DONTNEED cannot evict mapped pages) shows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.bench.llama_local import free_port
from agent.hostfs import HostPaths
from agent.inspect import collect
from agent.policy.model import WorkerSpec
from agent.worker.prepare import prepare_worker
from agent.worker.supervisor import RestartPolicy, Supervisor


def one_start(spec: WorkerSpec, *, cold: bool, state_dir: Path) -> dict[str, Any]:
    prepared = prepare_worker(spec.model_copy(update={"port": free_port()}), collect(HostPaths.live()))
    sup = Supervisor(prepared.spec, prepared.build, state_dir=state_dir, prewarm=not cold, drop_cache_first=cold,
                     policy=RestartPolicy(crashloop_count=1, ready_timeout_s=120))
    sup.start()
    try:
        if not sup.wait_ready(130):
            raise SystemExit(f"worker not ready: {sup.status().reason}")
        st = sup.status()
    finally:
        sup.stop()
    return {"mode": "cold" if cold else "warm", "load_seconds": st.load_seconds,
            "resident_at_start": st.resident_at_start,
            "prewarm_seconds": st.prewarm.seconds if st.prewarm and not cold else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--state-dir", default="/tmp/hosttune-bench-worker-load")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    spec = WorkerSpec(model=args.model, ctx=2048, parallel=1)
    rows = [one_start(spec, cold=cold, state_dir=Path(args.state_dir))
            for _ in range(args.runs) for cold in (True, False)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for mode in ("cold", "warm"):
        mine = [r for r in rows if r["mode"] == mode]
        loads = [r["load_seconds"] for r in mine if r["load_seconds"] is not None]
        resident = [r["resident_at_start"] for r in mine if r["resident_at_start"] is not None]
        line = f"{mode}: load median {statistics.median(loads):.3f}s (runs: {', '.join(f'{x:.3f}' for x in loads)})"
        if resident:
            line += f"; page cache at spawn {min(resident):.0%}-{max(resident):.0%}"
        pre = [r["prewarm_seconds"] for r in mine if r["prewarm_seconds"] is not None]
        if pre:
            line += f"; pre-warm read {statistics.median(pre):.3f}s"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
