"""Why a worker process ended: exit status or signal, the stderr line that explains it, and whether memory ran out.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

from agent.fsio import read_text_capped
from agent.hostfs import HostPaths

TIMESTAMP_PREFIX = re.compile(r"^\d+\.\d+\.\d+\.\d+ [A-Z] +")
TROUBLE = re.compile(r"error|failed|fatal|abort|out of memory|cannot|could not|couldn't|bad_alloc|panic",
                     re.IGNORECASE)
OOM_HINT = re.compile(r"out of memory|bad_alloc|cudaMalloc failed|failed to allocate|OOM", re.IGNORECASE)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def key_stderr_line(lines: list[str], model: Path | None) -> str | None:
    """The stderr line that best explains a failure: one naming the model file, else the last troubled one."""
    trouble = [TIMESTAMP_PREFIX.sub("", ln) for ln in lines if TROUBLE.search(ln)]
    if model is not None:
        naming = [ln for ln in trouble if str(model) in ln]
        if naming:
            return naming[-1]
    return trouble[-1] if trouble else None


def read_oom_kills(paths: HostPaths) -> int | None:
    try:
        for line in read_text_capped(paths.proc("vmstat"), errors="replace").splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None
