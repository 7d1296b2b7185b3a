"""What hosttune tunes on this host, read as values, so `bench --compare` can prove its A arm runs on an untouched
host: the sysctls the policy names, THP enabled/defrag, every hugepage pool (global and per node), each block
device's read_ahead_kb and scheduler, each CPU's cpufreq governor, and the hugetlbfs mounts. A snapshot taken
before anything ran is compared before every A round; any difference, or an open journal transaction, stops the
compare with the keys that differ named.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from agent.errors import HostError
from agent.fsio import read_str
from agent.hostfs import HostPaths
from agent.tuning.state import StateDir

Snapshot = dict[str, str]
THP_FILES = ("enabled", "defrag")
BLOCK_FILES = ("read_ahead_kb", "scheduler")
POOL_FILES = ("nr_hugepages", "nr_overcommit_hugepages")


class HostTouched(HostError):
    """The host is not as the compare found it (the A arm would not measure an untouched host)."""


def _put(out: Snapshot, key: str, path: Path) -> None:
    value = read_str(path)
    if value is not None:
        out[key] = value


def _dirs(parent: Path, pattern: str) -> list[Path]:
    try:
        return sorted(p for p in parent.glob(pattern) if p.is_dir())
    except OSError:
        return []


def hugetlbfs_mounts(paths: HostPaths) -> list[str]:
    text = read_str(paths.proc("mounts")) or ""
    points = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "hugetlbfs":
            points.append(fields[1])
    return sorted(points)


def take_snapshot(paths: HostPaths, sysctl_keys: Iterable[str]) -> Snapshot:
    out: Snapshot = {}
    for key in sorted(set(sysctl_keys)):
        out[f"sysctl:{key}"] = read_str(paths.sysctl(key)) or "(absent)"
    for name in THP_FILES:
        _put(out, f"thp:{name}", paths.sys("kernel/mm/transparent_hugepage", name))
    pools = [("", d) for d in _dirs(paths.sys("kernel/mm/hugepages"), "hugepages-*")]
    for node in _dirs(paths.sys("devices/system/node"), "node[0-9]*"):
        pools += [(f"{node.name}/", d) for d in _dirs(node / "hugepages", "hugepages-*")]
    for prefix, pool in pools:
        for name in POOL_FILES:
            _put(out, f"hugepages:{prefix}{pool.name}/{name}", pool / name)
    for dev in _dirs(paths.sys("block"), "*"):
        if dev.name.startswith(("loop", "ram")):  # test loop devices come and go; nothing tunes ram disks
            continue
        for name in BLOCK_FILES:
            _put(out, f"block:{dev.name}/{name}", dev / "queue" / name)
    for cpu in _dirs(paths.sys("devices/system/cpu"), "cpu[0-9]*"):
        _put(out, f"cpufreq:{cpu.name}/scaling_governor", cpu / "cpufreq" / "scaling_governor")
    out["mounts:hugetlbfs"] = ",".join(hugetlbfs_mounts(paths)) or "(none)"
    return out


def diff_snapshot(before: Snapshot, after: Snapshot) -> list[str]:
    """One line per key whose value differs (or appeared / went away), in key order."""
    lines = []
    for key in sorted(before.keys() | after.keys()):
        was, now = before.get(key), after.get(key)
        if was != now:
            lines.append(f"{key}: was {was!r}, now {now!r}")
    return lines


def open_transactions(state_dirs: Sequence[Path]) -> list[str]:
    """The state dirs whose journal holds an open transaction (an apply or revert that has not finished)."""
    found = []
    for d in state_dirs:
        txn = StateDir(d).journal().open_txn
        if txn is not None:
            found.append(f"{d}: open {txn.kind} transaction ({txn.policy or 'no policy'})")
    return found


def check_untouched(before: Snapshot, paths: HostPaths, sysctl_keys: Iterable[str],
                    state_dirs: Sequence[Path]) -> None:
    """Raise HostTouched naming every value that differs from `before` and every open journal transaction."""
    problems = open_transactions(state_dirs) + diff_snapshot(before, take_snapshot(paths, sysctl_keys))
    if problems:
        raise HostTouched("the host is not as the compare found it: " + "; ".join(problems[:20])
                          + (f" (+{len(problems) - 20} more)" if len(problems) > 20 else ""))


def check_not_tuned(state_dir: Path) -> None:
    """Refuse when a hosttune state dir's journal shows an applied policy: a hosttune already tuned this host, so
    arm A (llama-server on the untouched host) would not be untouched."""
    if not state_dir.is_dir():
        return
    applied = StateDir(state_dir).journal().data.applied
    if applied is not None:
        raise HostError(f"hosttune has applied policy {applied.policy!r} to this host (journal in {state_dir}): "
                        f"arm A would not run on an untouched host; stop the daemon and `hosttune revert` first")


def check_work_dir(path: Path, owner: int = 0) -> None:
    """--work-dir: root writes configs, a state dir and logs there, so it must be a real directory owned by
    `owner` (root) that neither group nor others can write (no planting files for root to use)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise HostError(f"the work dir cannot be read: {e.strerror}", path=path) from None
    if not stat.S_ISDIR(st.st_mode):
        raise HostError("the work dir is not a directory (a symlink or a file)", path=path)
    if st.st_uid != owner:
        raise HostError(f"the work dir is owned by uid {st.st_uid}, not {owner}: root writes there", path=path)
    if st.st_mode & 0o022:
        raise HostError(f"the work dir is group- or other-writable (mode {stat.S_IMODE(st.st_mode):o}): "
                        f"root writes there", path=path)
