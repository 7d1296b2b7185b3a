"""`hosttune inspect`: the host's facts as a readable summary, as JSON (--json), or the JSON schema (--schema)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from agent.errors import InputError
from agent.fsio import format_cpu_list
from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.render import human_bytes, print_json, table

HELP = "show the host's facts: CPU/NUMA, memory, hugepages, THP, disks, GPUs, sysctl, cpufreq, other tuners"
EPILOG = """\
examples:
  hosttune inspect                           readable summary of this host
  hosttune inspect --json                    the same facts as JSON (see docs/inspect.md)
  hosttune inspect --schema                  the JSON schema of --json
  hosttune inspect --json --procfs T/proc --sysfs T/sys --rootfs T --nvml-sim T/nvml.json
                                             a captured host tree (scripts/capture-host.py)
"""


def register(subparsers: Any) -> None:
    from agent.commands.options import host_root_options

    p = subparsers.add_parser("inspect", parents=[host_root_options()], help=HELP, description=HELP,
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the facts as JSON")
    out.add_argument("--schema", action="store_true", help="print the JSON schema of --json and exit")
    p.set_defaults(func=run)


def open_gpu_library(sim: str | None) -> Any | None:
    """The NVML handle for --nvml-sim FILE; None means "the real library" (collect opens it)."""
    if not sim:
        return None
    path = Path(sim)
    if not path.is_file():
        raise InputError("NVML simulation file not found", path=path, field="--nvml-sim")
    from agent.gpu.nvml import open_nvml

    return open_nvml(path)


def run(args: argparse.Namespace) -> int:
    if args.schema:
        json.dump(HostFacts.model_json_schema(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from agent.inspect import collect

    paths = HostPaths.from_options(args.procfs, args.sysfs, args.rootfs)
    paths.check()
    facts = collect(paths, open_gpu_library(args.nvml_sim))
    if args.json:
        print_json(facts)
    else:
        summary(facts, sys.stdout)
    return 0


def _section(out: TextIO, title: str) -> None:
    out.write(f"\n{title}\n")


def _join(items: Iterable[str]) -> str:
    return ", ".join(items) or "-"


def summary(facts: HostFacts, out: TextIO) -> None:
    """A few small tables a person can read at a glance; --json has every field."""
    c = facts.cpu
    out.write(f"host {facts.hostname or '?'}   kernel {facts.kernel.release or '?'}\n")

    _section(out, "CPU / NUMA")
    smt = {True: "on", False: "off", None: "?"}[c.smt_active]
    out.write(f"{c.model or 'unknown CPU'}: {c.sockets} socket(s), {c.cores} cores, {c.threads} threads, "
              f"SMT {smt}, online {format_cpu_list(c.online_cpus) or '-'}\n")
    out.write(f"flags: {' '.join(c.flags) or '-'}\n")
    table(["node", "cpus", "memory", "free", "distances"],
          [[n.id, format_cpu_list(n.cpus) or "-", human_bytes(n.memory_total_bytes),
            human_bytes(n.memory_free_bytes), " ".join(map(str, n.distances)) or "-"] for n in c.numa_nodes], out)

    _section(out, "Memory")
    m = facts.memory
    t = facts.thp
    table(["total", "available", "free", "swap", "mlock limit", "THP enabled", "THP defrag"],
          [[human_bytes(m.total_bytes), human_bytes(m.available_bytes), human_bytes(m.free_bytes),
            human_bytes(m.swap_total_bytes), human_bytes(m.mlock_limit_bytes) if m.mlock_limit_bytes else "unlimited",
            t.enabled if t.available else "n/a", t.defrag if t.available else "n/a"]], out)
    if facts.hugepages:
        out.write("\n")
        table(["hugepages", "total", "free", "reserved", "surplus", "per node (total/free)"],
              [[h.name, h.total, h.free, h.reserved, h.surplus,
                " ".join(f"{n}:{p.total}/{p.free}" for n, p in h.per_node.items()) or "-"]
               for h in facts.hugepages], out)

    _section(out, "Block devices")
    if facts.block_devices:
        table(["name", "kind", "size", "rotational", "numa", "scheduler", "read_ahead_kb", "nr_requests", "model"],
              [[d.name, d.kind, human_bytes(d.size_bytes), d.rotational, d.numa_node, d.scheduler,
                d.read_ahead_kb, d.nr_requests, d.model] for d in facts.block_devices], out)
    else:
        out.write("none\n")

    _section(out, "GPUs")
    if facts.gpus:
        table(["gpu", "name", "pci", "numa", "memory", "max sm MHz", "power limit W", "persistence"],
              [[g.index, g.name, g.pci_bus_id, g.numa_node, human_bytes(g.memory_total_bytes), g.max_clocks.sm_mhz,
                None if g.power.limit_mw is None else g.power.limit_mw // 1000, g.persistence_mode]
               for g in facts.gpus], out)
    else:
        out.write(f"none ({facts.gpu_status.reason or 'no GPUs found'})\n")

    _section(out, "CPU frequency")
    cf = facts.cpufreq
    if cf.available:
        groups: dict[tuple[Any, ...], list[int]] = {}
        for f in cf.cpus:
            key = (f.driver, f.governor, f.energy_performance_preference, tuple(f.available_governors))
            groups.setdefault(key, []).append(f.cpu)
        table(["cpus", "driver", "governor", "epp", "available governors"],
              [[format_cpu_list(cpus), *key[:3], " ".join(key[3]) or "-"] for key, cpus in groups.items()], out)
    else:
        out.write(f"not applicable ({cf.reason})\n")

    _section(out, "Other tuners")
    if facts.conflicts:
        table(["name", "pid", "manages", "command"],
              [[k.name, k.pid, _join(k.manages), k.detail] for k in facts.conflicts], out)
    else:
        out.write("none running\n")

    _section(out, "Kernel")
    out.write(f"{facts.kernel.release or '?'} {facts.kernel.version or ''}".rstrip() + "\n")
    out.write(f"cmdline: {facts.kernel.cmdline or '-'}\n")
    out.write(f"sysctl: {len(facts.sysctl)} tunable keys read (--json lists them)\n")

    if facts.errors:
        _section(out, "Collector errors")
        for e in facts.errors:
            out.write(f"  {e}\n")
