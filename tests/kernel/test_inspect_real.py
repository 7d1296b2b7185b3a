"""`hosttune inspect --json` on this machine agrees with the kernel's own files (read here, by the test) and with
psutil: CPUs, memory, every block device and its queue settings, THP, hugepage pools, NUMA nodes, sysctls.

Values other tests change (hugepages, THP, sysctls) are compared under the kernel tier's lock, and the files
are read before and after the CLI runs: if the kernel changed them meanwhile, the comparison is retried.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.inspect.sysctl import SYSCTL_KEYS
from tests.kernel.tuning_support import kernel_tier_lock

SYS = Path("/sys")
PROC = Path("/proc")
LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_ADD, LOOP_CTL_REMOVE, LOOP_SET_FD, LOOP_CLR_FD = 0x4C80, 0x4C81, 0x4C00, 0x4C01


def hosttune_inspect() -> dict[str, Any]:
    script = Path(sys.executable).parent / "hosttune"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "agent"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTTUNE_")}
    proc = subprocess.run([*argv, "inspect", "--json"], capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def cpus(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def active(path: Path) -> str:
    match = re.search(r"\[([^\]]+)\]", path.read_text())
    return match.group(1) if match else path.read_text().strip()


def attached(disk: Path) -> bool:
    """The rule inspection documents: a loop device counts only when something is attached to it."""
    if not disk.name.startswith("loop"):
        return True
    return int((disk / "size").read_text()) > 0 or (disk / "loop/backing_file").exists()


def kernel_view() -> dict[str, Any]:
    """What the kernel says, read directly: the values the CLI output must equal."""
    view: dict[str, Any] = {
        "online": cpus((SYS / "devices/system/cpu/online").read_text()),
        "present": cpus((SYS / "devices/system/cpu/present").read_text()),
        "thp": (active(SYS / "kernel/mm/transparent_hugepage/enabled"),
                active(SYS / "kernel/mm/transparent_hugepage/defrag")),
        "hugepages": {}, "node_hugepages": {}, "disks": {}, "sysctl": {},
    }
    for pool in sorted((SYS / "kernel/mm/hugepages").glob("hugepages-*kB")):
        view["hugepages"][int(pool.name[10:-2])] = tuple(
            int((pool / f).read_text()) for f in ("nr_hugepages", "free_hugepages", "resv_hugepages",
                                                   "surplus_hugepages"))
    for pool in sorted((SYS / "devices/system/node").glob("node*/hugepages/hugepages-*kB")):
        node = pool.parent.parent.name[4:]
        view["node_hugepages"][(node, int(pool.name[10:-2]))] = (int((pool / "nr_hugepages").read_text()),
                                                                 int((pool / "free_hugepages").read_text()))
    for disk in sorted((SYS / "block").iterdir()):
        if attached(disk):
            q = disk / "queue"
            view["disks"][disk.name] = {
                "read_ahead_kb": int((q / "read_ahead_kb").read_text()),
                "scheduler": active(q / "scheduler") if (q / "scheduler").exists() else None,
                "nr_requests": int((q / "nr_requests").read_text()) if (q / "nr_requests").exists() else None,
                "size_bytes": int((disk / "size").read_text()) * 512,
                "rotational": (q / "rotational").read_text().strip() == "1",
            }
    for key in SYSCTL_KEYS:
        path = PROC / "sys" / key.replace(".", "/")
        with contextlib.suppress(OSError):
            view["sysctl"][key] = " ".join(path.read_text().split())
    return view


def inspect_stable() -> tuple[dict[str, Any], dict[str, Any]]:
    """(CLI facts, kernel view) taken while the kernel view did not change under the CLI."""
    with kernel_tier_lock():
        for _ in range(5):
            before = kernel_view()
            facts = hosttune_inspect()
            if kernel_view() == before:
                return facts, before
            time.sleep(0.2)
    pytest.fail("kernel values kept changing while inspect ran")


@pytest.fixture(scope="module")
def live() -> tuple[dict[str, Any], dict[str, Any]]:
    return inspect_stable()


pytestmark = pytest.mark.root


def test_cpus(live: tuple[dict[str, Any], dict[str, Any]]) -> None:
    facts, kernel = live
    assert facts["cpu"]["online_cpus"] == kernel["online"]
    assert len(facts["cpu"]["online_cpus"]) == os.cpu_count() == psutil.cpu_count(logical=True)
    assert facts["cpu"]["threads"] == len(kernel["present"])
    assert facts["cpu"]["cores"] == psutil.cpu_count(logical=False)
    node_dirs = sorted(int(p.name[4:]) for p in (SYS / "devices/system/node").glob("node[0-9]*"))
    assert [n["id"] for n in facts["cpu"]["numa_nodes"]] == (node_dirs or [0])
    assert sorted(c for n in facts["cpu"]["numa_nodes"] for c in n["cpus"]) == kernel["online"]


def test_memory_total() -> None:
    facts = hosttune_inspect()
    mem_total_kb = next(int(line.split()[1]) for line in (PROC / "meminfo").read_text().splitlines()
                        if line.startswith("MemTotal:"))
    assert facts["memory"]["total_bytes"] == mem_total_kb * 1024 == psutil.virtual_memory().total


def test_every_block_device_and_its_queue(live: tuple[dict[str, Any], dict[str, Any]]) -> None:
    facts, kernel = live
    got = {d["name"]: d for d in facts["block_devices"]}
    assert set(got) == set(kernel["disks"])
    for name, want in kernel["disks"].items():
        assert {k: got[name][k] for k in want} == want, name


def test_thp_and_hugepages(live: tuple[dict[str, Any], dict[str, Any]]) -> None:
    facts, kernel = live
    assert (facts["thp"]["enabled"], facts["thp"]["defrag"]) == kernel["thp"]
    pools = {h["size_kb"]: h for h in facts["hugepages"]}
    assert set(pools) == set(kernel["hugepages"])
    for size_kb, counts in kernel["hugepages"].items():
        p = pools[size_kb]
        assert (p["total"], p["free"], p["reserved"], p["surplus"]) == counts
    for (node, size_kb), counts in kernel["node_hugepages"].items():
        n = pools[size_kb]["per_node"][node]
        assert (n["total"], n["free"]) == counts


def test_sysctls_and_kernel(live: tuple[dict[str, Any], dict[str, Any]]) -> None:
    facts, kernel = live
    assert facts["sysctl"] == kernel["sysctl"]
    assert facts["kernel"]["release"] == os.uname().release
    assert facts["hostname"] == os.uname().nodename
    assert facts["kernel"]["cmdline"] == (PROC / "cmdline").read_text().strip()
    has_cpufreq = any((SYS / "devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor"))
    assert facts["cpufreq"]["available"] is has_cpufreq
    assert facts["errors"] == []


@contextlib.contextmanager
def attached_loop_device(backing: Path) -> Iterator[str]:
    """A fresh private loop device with `backing` attached; detached and removed afterwards."""
    ctl = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    try:
        index = None
        for n in range(4200, 4300):
            if (SYS / "block" / f"loop{n}").exists():
                continue
            with contextlib.suppress(FileExistsError):
                index = fcntl.ioctl(ctl, LOOP_CTL_ADD, n)
                break
        assert index is not None, "no free loop device number"
        try:
            for _ in range(50):  # devtmpfs creates the node right after the device appears
                if Path(f"/dev/loop{index}").exists():
                    break
                time.sleep(0.05)
            loop_fd = os.open(f"/dev/loop{index}", os.O_RDWR | os.O_CLOEXEC)
            back_fd = os.open(backing, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(loop_fd, LOOP_SET_FD, back_fd)
                try:
                    yield f"loop{index}"
                finally:
                    fcntl.ioctl(loop_fd, LOOP_CLR_FD, 0)
            finally:
                os.close(back_fd)
                os.close(loop_fd)
        finally:
            for _ in range(50):  # the detach completes asynchronously
                try:
                    fcntl.ioctl(ctl, LOOP_CTL_REMOVE, index)
                    break
                except OSError:
                    time.sleep(0.1)
    finally:
        os.close(ctl)


@pytest.mark.kernel
def test_a_new_disk_appears_with_its_settings(tmp_path: Path) -> None:
    """Attach a loop device, give it a read-ahead nobody else uses, and find both in the facts."""
    backing = tmp_path / "disk.img"
    with backing.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    with attached_loop_device(backing) as name:
        (SYS / "block" / name / "queue/read_ahead_kb").write_text("4036")
        facts = hosttune_inspect()
        disk = next((d for d in facts["block_devices"] if d["name"] == name), None)
        assert disk is not None, f"{name} missing from {[d['name'] for d in facts['block_devices']]}"
        assert (disk["kind"], disk["size_bytes"], disk["read_ahead_kb"]) == ("loop", 16 * 1024 * 1024, 4036)
    assert name not in {d["name"] for d in hosttune_inspect()["block_devices"]}
