"""hosttune fit: will this GGUF model fit, and with how much context x parallel slots? Reads only.

Reads the model's GGUF metadata (weights, layers, KV heads, head sizes), the chosen device's free memory from the
host facts, and reports the KV-cache bytes per token for every cache type, what total context fits next to the
weights with headroom, a recommended -c/-np, and the 2 MiB hugepage count that would back the weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.commands.options import host_root_options
from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.model_files import resolve_model
from agent.render import human_bytes, print_json, table
from agent.worker.fit import CACHE_TYPES, FitReport, device_memory, plan_fit
from agent.worker.gguf_meta import read_gguf

EPILOG = """\
examples:
  hosttune fit default                        the bundled SmolLM2-135M against this host's free memory
  hosttune fit model.gguf --device gpu:0      against GPU 0's free memory
  hosttune fit model.gguf --ctx 32768 --parallel 8 -ctk q8_0 -ctv q8_0 --json
"""


def host_facts(args: argparse.Namespace) -> HostFacts:
    """Facts of the host named by the root options; NVML read-only (simulated with --nvml-sim)."""
    from agent.gpu.nvml import open_nvml
    from agent.inspect import collect

    paths = HostPaths.from_options(args.procfs, args.sysfs, args.rootfs).check()
    nvml = None
    if getattr(args, "nvml_sim", None):
        nvml = open_nvml(args.nvml_sim, dry_run=True)
    return collect(paths, nvml=nvml)


def register(sub: Any) -> None:
    p = sub.add_parser("fit", help="memory fit of a GGUF model: KV per token, context x parallel, hugepages",
                       description=__doc__, epilog=EPILOG, parents=[host_root_options()],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="a GGUF file, or `default` for the bundled model")
    p.add_argument("--device", default="cpu", help="cpu (MemAvailable), cpu:NODE or gpu:INDEX (default cpu)")
    p.add_argument("--ctx", type=int, metavar="N", help="check this total context (-c)")
    p.add_argument("--parallel", type=int, metavar="N", help="slots (-np) to size for")
    p.add_argument("-ctk", "--cache-type-k", default="f16", choices=list(CACHE_TYPES), help="K cache type")
    p.add_argument("-ctv", "--cache-type-v", default="f16", choices=list(CACHE_TYPES), help="V cache type")
    p.add_argument("-ub", "--ubatch-size", type=int, default=512, metavar="N",
                   help="micro-batch (-ub): part of the sliding-window cache's size (512)")
    p.add_argument("--swa-full", action="store_true", help="size sliding-window layers' cache as full (--swa-full)")
    p.add_argument("--headroom", type=float, default=10.0, metavar="PCT", help="free memory kept spare (10)")
    p.add_argument("--json", action="store_true", help="the full report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path: Path = resolve_model(args.model)
    info = read_gguf(path)
    device = device_memory(host_facts(args), args.device)
    report = plan_fit(info, device, headroom_pct=args.headroom, ctx=args.ctx, parallel=args.parallel,
                      cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v, ubatch=args.ubatch_size,
                      swa_full=args.swa_full)
    if args.json:
        print_json(report)
    else:
        show(report)
    return 0


def show(r: FitReport) -> None:
    m = r.model
    print(f"model:      {m.name or Path(m.path).name} ({m.architecture}) {m.path}")
    print(f"            {m.parameter_count / 1e6:.1f}M parameters, {m.n_layer} layers, {m.n_head} heads "
          f"({m.n_head_kv} KV), head dims K {m.head_dim_k} V {m.head_dim_v}, trained context {m.context_length}")
    print(f"weights:    {human_bytes(r.weight_bytes)} ({r.weight_bytes} bytes); {r.hugepages_2m} x 2 MiB hugepages")
    print(f"device:     {r.device.name}: {human_bytes(r.device.free_bytes)} free; budget {human_bytes(r.budget_bytes)}"
          f" after {r.headroom_pct:g}% headroom; buffers ~{human_bytes(r.overhead_bytes)}; "
          f"KV budget {human_bytes(r.kv_budget_bytes)}")
    print(f"seed rule:  free >= 1.5x weights: {'yes' if r.seed_rule_ok else 'NO'}")
    lay = m.layout
    print(f"layout:     {r.layout}" + (f" (window {lay.sliding_window}, {sum(lay.swa_layers)} of {m.n_layer} layers "
                                       "slide)" if lay.sliding_window else "")
          + (f" ({sum(lay.recurrent_layers)} recurrent layers)" if any(lay.recurrent_layers) else ""))
    print()
    table(["cache type", "KV bytes/token (growing layers)", "tokens that fit"],
          [(t, r.kv_bytes_per_token[t], r.max_tokens.get(t)) for t in CACHE_TYPES])
    print()
    print(f"options (K {r.cache_type_k}, V {r.cache_type_v}: {r.kv_bytes_per_token_selected} bytes/token):")
    table(["parallel (-np)", "ctx per slot", "ctx total (-c)", "KV", "total"],
          [(o.parallel, o.ctx_per_slot, o.ctx_total, human_bytes(o.kv_bytes), human_bytes(o.total_bytes))
           for o in r.options])
    if r.recommended is not None:
        rec = r.recommended
        print(f"\nrecommended: -c {rec.ctx_total} -np {rec.parallel} ({rec.ctx_per_slot} tokens per slot)")
    if r.requested is not None:
        q = r.requested
        print(f"requested:   -c {q.ctx_total} -np {q.parallel}: needs {human_bytes(q.total_bytes)} -> "
              f"{'fits' if q.fits else 'does NOT fit'}")
    if r.context_memory is not None:
        cm = r.context_memory
        print(f"\ncontext memory of -c {cm.n_ctx} -np {cm.parallel} ({cm.n_ctx_seq} per slot), as llama.cpp "
              f"allocates it:")
        table(["kind", "layers", "cells", "streams", "bytes"],
              [(p.kind, p.layers, p.cells, p.streams, human_bytes(p.bytes)) for p in cm.parts])
    for note in r.notes:
        print(f"note: {note}")
