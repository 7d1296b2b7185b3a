"""Snapshot and compare the live host's tunables: writable sysctls under vm/kernel/fs, hugepage pools (global and
per node), THP, and every block device's queue settings. Values that change on their own are left out."""

from __future__ import annotations

import os
import time
from pathlib import Path

PROC_SYS = Path("/proc/sys")
SYS = Path("/sys")
VOLATILE = {"kernel/ns_last_pid", "kernel/random", "fs/binfmt_misc", "kernel/usermodehelper",
            "kernel/keys", "kernel/pty", "fs/dentry-state", "fs/inode-nr", "fs/inode-state",
            "fs/file-nr", "kernel/perf_event_max_sample_rate", "vm/stat_refresh", "vm/drop_caches",
            "vm/compact_memory", "kernel/sysrq-trigger"}


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _sysctls() -> dict[str, str]:
    out: dict[str, str] = {}
    for top in ("vm", "kernel", "fs"):
        for dirpath, _dirs, files in os.walk(PROC_SYS / top):
            for f in files:
                p = Path(dirpath) / f
                rel = str(p.relative_to(PROC_SYS))
                if any(rel == v or rel.startswith(v + "/") for v in VOLATILE):
                    continue
                if not os.access(p, os.W_OK) or not (p.stat().st_mode & 0o444):
                    continue
                value = _read(p)
                if value is not None:
                    out["sysctl:" + rel] = value
    return out


def _hugepages() -> dict[str, str]:
    out: dict[str, str] = {}
    patterns = ["kernel/mm/hugepages/*/nr_hugepages", "kernel/mm/hugepages/*/nr_overcommit_hugepages",
                "devices/system/node/node*/hugepages/*/nr_hugepages"]
    for pat in patterns:
        for p in SYS.glob(pat):
            value = _read(p)
            if value is not None:
                out["sys:" + str(p.relative_to(SYS))] = value
    return out


def _thp() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("enabled", "defrag", "khugepaged/defrag"):
        p = SYS / "kernel/mm/transparent_hugepage" / name
        value = _read(p)
        if value is not None:
            out["sys:" + str(p.relative_to(SYS))] = value
    return out


def _block() -> dict[str, str]:
    out: dict[str, str] = {}
    for dev in sorted((SYS / "block").iterdir()):
        # loop devices made by tests come and go; their own tests check them
        if dev.name.startswith("loop"):
            continue
        for name in ("read_ahead_kb", "scheduler", "nr_requests"):
            value = _read(dev / "queue" / name)
            if value is not None:
                out[f"block:{dev.name}/{name}"] = value
    return out


def snapshot() -> dict[str, str]:
    first = {**_sysctls(), **_hugepages(), **_thp(), **_block()}
    time.sleep(0.05)
    second = {**_sysctls(), **_hugepages(), **_thp(), **_block()}
    return {k: v for k, v in first.items() if second.get(k) == v}


def diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    lines = []
    for key, value in before.items():
        now = after.get(key)
        if now != value:
            lines.append(f"  {key}: was {value.strip()!r}, now {None if now is None else now.strip()!r}")
    return lines
