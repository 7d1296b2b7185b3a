"""Host trees for tests: copies of the committed fixture hosts (tests/fixtures/hosts/<name>, made by
tests/fixtures/make_fixture_hosts.py; DEFAULT_HOST is what the `host` fixture copies) or of small scenarios
built here, and byte-for-byte snapshots of a tree.

The "server" scenario built below has 2 NUMA nodes, 4 CPUs with cpufreq, 2M/1G hugepage pools, THP, an NVMe, a
SATA disk and a loop device, and a udev rules directory; tests that depend on those details name it with
@pytest.mark.host("server").
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from agent.hostfs import HostPaths

FIXTURE_HOSTS = Path(__file__).resolve().parent.parent / "fixtures" / "hosts"
# The host tree a test gets from the `host` fixture unless it names another with @pytest.mark.host(name).
DEFAULT_HOST = "server-2s-8gpu"


def _w(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def _link(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def build_server(root: Path, *, cpufreq: bool = True, nodes: int = 2) -> None:
    """A small 2-socket server tree with the files the OS tuners read and write, in kernel formats."""
    proc, sys = root / "proc", root / "sys"
    for key, value in {"vm/swappiness": "60\n", "vm/max_map_count": "65530\n", "vm/dirty_ratio": "20\n",
                       "vm/nr_hugepages": "0\n", "net/core/somaxconn": "4096\n",
                       "net/ipv4/ip_local_port_range": "32768\t60999\n", "kernel/numa_balancing": "1\n",
                       "fs/file-max": "9223372036854775807\n"}.items():
        _w(proc / "sys" / key, value)
    _w(proc / "sys/kernel/osrelease", "6.18.0\n", 0o444)
    _w(proc / "meminfo", "MemTotal:       263856128 kB\nMemFree:        250000000 kB\n"
       "MemAvailable:   255000000 kB\nCached:          1000000 kB\nHugepagesize:       2048 kB\n", 0o444)
    _w(proc / "cpuinfo", "".join(f"processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n"
                                 f"physical id\t: {n // 2}\ncore id\t\t: {n % 2}\nflags\t\t: avx2 avx512f\n\n"
                                 for n in range(4)), 0o444)
    _w(proc / "cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/nvme0n1p2 ro quiet hugepagesz=1G\n", 0o444)
    for kb in (2048, 1048576):
        pool = sys / f"kernel/mm/hugepages/hugepages-{kb}kB"
        total = 8 if kb == 2048 else 0
        free = 4 if kb == 2048 else 0
        for name, value in {"nr_hugepages": total, "free_hugepages": free, "resv_hugepages": 0,
                            "surplus_hugepages": 0, "nr_overcommit_hugepages": 0}.items():
            _w(pool / name, f"{value}\n")
        for node in range(nodes):
            npool = sys / f"devices/system/node/node{node}/hugepages/hugepages-{kb}kB"
            n_total = total if node == nodes - 1 else 0
            n_free = free if node == nodes - 1 else 0
            for name, value in {"nr_hugepages": n_total, "free_hugepages": n_free, "surplus_hugepages": 0}.items():
                _w(npool / name, f"{value}\n")
    thp = sys / "kernel/mm/transparent_hugepage"
    _w(thp / "enabled", "always [madvise] never\n")
    _w(thp / "defrag", "always defer defer+madvise [madvise] never\n")
    cpu = sys / "devices/system/cpu"
    _w(cpu / "online", "0-3\n", 0o444)
    for n in range(4):
        (cpu / f"cpu{n}").mkdir(parents=True, exist_ok=True)
        if not cpufreq:
            continue
        pol = cpu / f"cpufreq/policy{n}"
        _w(pol / "scaling_governor", "powersave\n")
        _w(pol / "scaling_available_governors", "performance powersave\n", 0o444)
        _w(pol / "energy_performance_preference", "balance_performance\n")
        _w(pol / "energy_performance_available_preferences",
           "default performance balance_performance balance_power power \n", 0o444)
        _w(pol / "scaling_driver", "intel_pstate\n", 0o444)
        _link(cpu / f"cpu{n}/cpufreq", f"../cpufreq/policy{n}")
    disks = {
        "nvme0n1": ("devices/pci0000:00/0000:00:02.0/nvme/nvme0/nvme0n1", "none [mq-deadline] kyber bfq \n",
                    "0\n", "Samsung SSD 990 PRO 2TB\n"),
        "sda": ("devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda",
                "none [mq-deadline] bfq \n", "1\n", "WDC WD40EFRX-68N\n"),
        "loop0": ("devices/virtual/block/loop0", "[none] mq-deadline \n", "0\n", None),
    }
    for name, (devpath, sched, rot, model) in disks.items():
        d = sys / devpath
        _w(d / "queue/scheduler", sched)
        _w(d / "queue/read_ahead_kb", "128\n")
        _w(d / "queue/nr_requests", "256\n" if name != "loop0" else "128\n")
        _w(d / "queue/rotational", rot, 0o444)
        if model:  # nvme: device -> the controller (nvme0); scsi/ata: device -> the 0:0:0:0 device
            up = ".." if name.startswith("nvme") else "../.."
            _w((d / up).resolve() / "model", model, 0o444)
            _link(d / "device", up)
        _link(sys / "block" / name, "../" + devpath)
    (root / "rootfs/etc/udev/rules.d").mkdir(parents=True)


SCENARIOS: dict[str, Callable[[Path], None]] = {
    "server": build_server,
    "no-cpufreq": lambda root: build_server(root, cpufreq=False, nodes=1),
}


def paths_for(root: Path) -> HostPaths:
    rootfs = root / "rootfs"
    rootfs.mkdir(exist_ok=True)
    return HostPaths(procfs=root / "proc", sysfs=root / "sys", rootfs=rootfs)


def make_tree(name: str, dest: Path) -> HostPaths:
    committed = FIXTURE_HOSTS / name
    if committed.is_dir():
        shutil.copytree(committed, dest, symlinks=True)
    else:
        SCENARIOS[name](dest)
    return paths_for(dest)


def tree_state(root: Path) -> dict[str, bytes]:
    """Every file's bytes and every link's target under root (what "byte for byte" compares)."""
    out: dict[str, bytes] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = b"->" + os.readlink(p).encode()
            elif p.is_file():
                out[rel] = p.read_bytes()
    return out


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for rel, data in sorted(tree_state(root).items()):
        h.update(rel.encode() + b"\0" + data + b"\0")
    return h.hexdigest()
