"""What 1 Hz telemetry costs: CPU per sample, and the sampling process's CPU share over a run at 1 Hz.

    .venv/bin/python bench/telemetry_cost.py [--samples 100] [--seconds 30] [--scrape-only] [--json FILE]

Samplers as the daemon runs them: host (psutil), worker (a real idle llama-server's /metrics and /slots) and the
gateway's windows filled like a busy minute (300 TTFTs, 9,000 inter-token gaps: ~150 tokens/s for 60 s); GPU
through agent/telemetry/gpu.py when NVML is present. Budget (issue 5 / the daemon): <= 0.5% of one core at 1 Hz,
i.e. <= 5 ms of CPU per sample. Measured twice: idle (no traffic: empty gateway windows) and busy; the 1 Hz run
(BackgroundScheduler, process CPU time over --seconds) is the idle case the daemon budget is about.

Scrape cost: rendering /metrics of one busy sample through prometheus_client (agent/metrics/prom.py: a collector on
a private registry, generate_latest) against the hand-written formatter hosttune used before (kept below, in this
bench only, for the side-by-side), on the same families, in alternating rounds (--scrape-rounds, each rendering
--scrape-renders times); median and spread of CPU ms per render. `--scrape-only` runs just that, without
llama-server (host + busy gateway families).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apscheduler.schedulers.background import BackgroundScheduler

from agent.bench.llama_local import LocalLlamaServer
from agent.gateway.stats import GatewayStats, RequestRecord
from agent.gateway.upstream import StaticUpstream
from agent.gpu.nvml import open_nvml
from agent.metrics.prom import MetricFamily, format_families
from agent.model_files import default_model_path
from agent.telemetry.collector import Telemetry, build_telemetry


def handwritten_format(families: list[MetricFamily]) -> str:
    """The exposition writer of hosttune before prometheus_client (9b952c9 agent/metrics/prom.py), for comparison."""
    def value(v: float) -> str:
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
        return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)

    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    name_re = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    label_re = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    merged: dict[str, MetricFamily] = {}
    for fam in families:
        if not name_re.match(fam.name) or fam.type not in ("counter", "gauge", "summary", "histogram", "untyped"):
            raise ValueError(f"invalid family {fam.name!r} {fam.type!r}")
        if fam.name in merged:
            merged[fam.name].samples.extend(fam.samples)
        else:
            merged[fam.name] = MetricFamily(fam.name, fam.type, fam.help, list(fam.samples))
    lines: list[str] = []
    for fam in merged.values():
        lines.append(f"# HELP {fam.name} {esc(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for s in fam.samples:
            if not all(label_re.match(k) for k in s.labels):
                raise ValueError(f"invalid label name on {s.name}")
            labels = ",".join(f'{k}="{esc(v)}"' for k, v in s.labels.items())
            lines.append(f"{s.name}{{{labels}}} {value(s.value)}" if labels else f"{s.name} {value(s.value)}")
    return "\n".join(lines) + "\n"


def scrape_rounds(tel: Telemetry, rounds: int, renders: int) -> dict[str, dict[str, float]]:
    """CPU ms per /metrics render of the same sample: prometheus_client vs the hand-written formatter, ABAB."""
    sample = tel.latest() or tel.sample_once()
    out: dict[str, list[float]] = {"prometheus_client": [], "handwritten": []}
    for _ in range(rounds):
        for arm, render in (("prometheus_client", format_families), ("handwritten", handwritten_format)):
            t0 = time.thread_time()
            for _ in range(renders):
                render(tel.families(sample))
            out[arm].append((time.thread_time() - t0) / renders * 1000)
    return {arm: {"median": statistics.median(v), "min": min(v), "max": max(v)} for arm, v in out.items()}


def busy_stats() -> GatewayStats:
    stats = GatewayStats(window_s=60)
    rng = random.Random(1)
    for _ in range(300):
        stats.finish(RequestRecord(route="/v1/chat/completions", stream=True, started=0.0, queue_wait_s=0.001,
                                   ttft_s=rng.uniform(0.05, 0.4), itl_s=[rng.uniform(0.005, 0.02) for _ in range(30)],
                                   e2e_s=1.0, tokens_in=50, tokens_out=30, outcome="ok"))
    return stats


def process_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--scrape-rounds", type=int, default=11)
    ap.add_argument("--scrape-renders", type=int, default=50)
    ap.add_argument("--scrape-only", action="store_true",
                    help="only the render comparison, on host + busy gateway families (no llama-server)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.scrape_only:
        tel = build_telemetry(gateway=busy_stats())
        tel.sample_once()
        out_scrape = {"busy_scrape_render_cpu_ms": scrape_rounds(tel, args.scrape_rounds, args.scrape_renders),
                      "busy_exposition_bytes": len(tel.exposition())}
        print(json.dumps(out_scrape, indent=2))
        return 0
    with LocalLlamaServer(default_model_path(), threads=2, extra_args=["-np", "4", "-c", "4096"]) as llama:
        busy = build_telemetry(endpoint=StaticUpstream(llama.url), gateway=busy_stats(), gpu=open_nvml())
        busy.sample_once()  # first sample sets up the HTTP connection and the CPU baseline
        busy_costs = [busy.sample_once().cpu_cost_s * 1000 for _ in range(args.samples)]
        scrape = scrape_rounds(busy, args.scrape_rounds, args.scrape_renders)
        exposition_bytes = len(busy.exposition())
        busy.close()
        # idle: what the daemon pays with no traffic (empty gateway windows), per sample and at 1 Hz
        tel = build_telemetry(endpoint=StaticUpstream(llama.url), gateway=GatewayStats(window_s=60),
                              gpu=open_nvml())
        tel.sample_once()
        costs = [tel.sample_once().cpu_cost_s * 1000 for _ in range(args.samples)]
        scheduler = BackgroundScheduler()
        tel.register_jobs(scheduler, interval_s=1.0)
        time.sleep(0.5)
        cpu0, t0 = process_cpu(), time.monotonic()
        scheduler.start()
        time.sleep(args.seconds)
        scheduler.shutdown(wait=True)
        cpu1, t1 = process_cpu(), time.monotonic()
        tel.close()
    last = tel.latest()
    def figures(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.mean(values), "p50": statistics.median(values),
                "p95": statistics.quantiles(values, n=20)[-1], "max": max(values)}

    out = {
        "idle_per_sample_cpu_ms": figures(costs),
        "busy_per_sample_cpu_ms": figures(busy_costs),
        "busy_scrape_render_cpu_ms": scrape,
        "busy_exposition_bytes": exposition_bytes,
        "idle_run_at_1hz": {"seconds": t1 - t0, "process_cpu_s": cpu1 - cpu0,
                       "core_share_pct": (cpu1 - cpu0) / (t1 - t0) * 100},
        "samplers": {"host": last is not None and last.host is not None,
                     "worker": last is not None and last.worker is not None and last.worker.up,
                     "gateway": last is not None and last.gateway is not None,
                     "gpus": 0 if last is None else len(last.gpus)},
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
