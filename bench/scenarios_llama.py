"""Each `hosttune bench --scenario` once against a private llama-server at its defaults: are the scenarios' default
concurrency and rates sane on this host? (tokens/s, TTFT and ITL percentiles, goodput at the policies' 2 s TTFT
SLO, client-estimated vs server-counted prompt tokens.)

    flock /tmp/hosttune-heavy.lock env PYTHONPATH=$PWD .venv/bin/python bench/scenarios_llama.py \
        [--duration 30] [--scenarios chat,multiturn,rag,burst] [--knobs "np=4;c=16384"] [--json FILE]

The engine is agent.bench.llama_local.LocalLlamaServer (bundled model, -t 2, loopback, stopped by PID at the end).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from agent.bench.llama_local import LocalLlamaServer, knob_args
from agent.bench.load import Bounds, Target
from agent.bench.report import print_table
from agent.bench.runner import bench_scenario
from agent.bench.sweep import parse_grid
from agent.model_files import resolve_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--scenarios", default="chat,multiturn,rag,burst")
    ap.add_argument("--knobs", default="", help='llama-server knobs, e.g. "np=4;c=16384" (default: its defaults)')
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slo-ttft-ms", type=float, default=2000.0)
    ap.add_argument("--slo-itl-ms", type=float, default=200.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    knobs = parse_grid(args.knobs)[0] if args.knobs else {}
    slo = (args.slo_ttft_ms / 1000, args.slo_itl_ms / 1000)
    levels: list[dict[str, Any]] = []
    with LocalLlamaServer(resolve_model("default"), threads=args.threads, extra_args=knob_args(knobs)) as server:
        for name in args.scenarios.split(","):
            report = bench_scenario(Target(server.url), name, None, [], [], Bounds(duration_s=args.duration), seed=1,
                                    warmup=1, slo=slo)
            levels += report["levels"]
            lv = report["levels"][-1]
            # one line per scenario as it ends, so a run cut short still leaves its figures
            print(f"{lv['label']}: prompt tokens est {lv['prompt_tokens_est']} / server {lv['prompt_tokens']}, "
                  f"goodput {lv['goodput']['met']}/{lv['goodput']['total']} "
                  f"({lv['goodput']['requests_per_s']:.2f} req/s, {lv['goodput']['tokens_per_s']:.1f} tok/s), "
                  f"errors {lv['errors']}, load average {os.getloadavg()[0]:.2f}", flush=True)
            if args.json:
                args.json.write_text(json.dumps({"knobs": knobs, "levels": levels}, indent=2) + "\n")
    print_table(levels)
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
