"""Other tuners running on the host, and which of hosttune's tuning domains each may fight over.

Processes are found by their comm (the kernel's 15-character name) or, for daemons started through an
interpreter (`python3 /usr/sbin/tuned`), by the script named on the command line. TLP is not a daemon: it
applies its settings at boot and on power events, so its state directory (/run/tlp) counts as running.
`manages` uses the domain names the tuners declare (agent/tuners/*: `domains`), so the plan can warn when one
of these may undo a change.
"""

from __future__ import annotations

import os

from agent.fsio import read_text
from agent.hostfs import HostPaths
from agent.inspect.models import Conflict
from agent.inspect.registry import register

# name -> tuning domains it touches (see each project's docs: TuneD plugins cpu/disk/vm/sysctl/bootloader/irq,
# power-profiles-daemon's governor/EPP drivers, TLP's CPU and disk settings, bpftune's sysctl tuners).
KNOWN_TUNERS: dict[str, tuple[str, ...]] = {
    "tuned": ("block", "bootargs", "cpu", "cpufreq", "irq", "sysctl", "thp"),
    "irqbalance": ("irq",),
    "numad": ("cpu", "numa"),
    "power-profiles-daemon": ("cpufreq", "power"),
    "tlp": ("block", "cpufreq", "power"),
    "bpftune": ("sysctl",),
}
COMM_LEN = 15  # TASK_COMM_LEN - 1: the kernel truncates comm
INTERPRETERS = ("python", "perl", "sh", "bash", "dash")
TLP_STATE_DIR = "/run/tlp"
DETAIL_MAX = 200


def _by_comm() -> dict[str, str]:
    return {name[:COMM_LEN]: name for name in KNOWN_TUNERS}


def match_process(comm: str, argv: list[str]) -> str | None:
    """The known tuner this process is, if any."""
    names = _by_comm()
    if comm in names:
        return names[comm]
    if not argv:
        return None
    first = os.path.basename(argv[0])
    if first in KNOWN_TUNERS:
        return first
    if first.startswith(INTERPRETERS):
        # `#!/usr/bin/python3 -Es` runs as ['/usr/bin/python3', '-Es', '/usr/sbin/tuned', ...]
        script = next((a for a in argv[1:] if not a.startswith("-")), "")
        if os.path.basename(script) in KNOWN_TUNERS:
            return os.path.basename(script)
    return None


def _pids(paths: HostPaths) -> list[int]:
    root = paths.proc()
    try:
        return sorted(int(e.name) for e in os.scandir(root) if e.name.isdigit())
    except OSError:
        return []


@register("conflicts", fallback=list)
def collect(paths: HostPaths) -> list[Conflict]:
    found: list[Conflict] = []
    for pid in _pids(paths):
        comm = read_text(paths.proc(str(pid), "comm"))
        if comm is None:
            continue  # the process exited while we looked
        raw = read_text(paths.proc(str(pid), "cmdline")) or ""
        argv = [a for a in raw.split("\0") if a]
        name = match_process(comm.strip(), argv)
        if name is None:
            continue
        detail = " ".join(argv)[:DETAIL_MAX] or None
        found.append(Conflict(name=name, pid=pid, detail=detail, manages=list(KNOWN_TUNERS[name])))
    if paths.root(TLP_STATE_DIR).is_dir() and not any(c.name == "tlp" for c in found):
        found.append(Conflict(name="tlp", detail=f"state in {TLP_STATE_DIR}: applies settings at boot and on "
                              "power events", manages=list(KNOWN_TUNERS["tlp"])))
    return sorted(found, key=lambda c: (c.name, c.pid or 0))
