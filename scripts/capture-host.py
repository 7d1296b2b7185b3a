#!/usr/bin/env python3
"""Snapshot the files `hosttune inspect` reads from a real host into a new fixture scenario.

    scripts/capture-host.py tests/fixtures/hosts/my-host          # the live host
    scripts/capture-host.py OUT --procfs /host/proc --sysfs /host/sys --rootfs /host

OUT becomes a small root tree: OUT/proc, OUT/sys (and OUT/run/tlp when TLP is active), replayable with
`hosttune inspect --rootfs OUT --procfs OUT/proc --sysfs OUT/sys`. Only what inspection (and the tuners, for
the same keys) read is copied: no /proc/<pid> beyond comm+cmdline of known tuners, no environment, no logs.
Kernel command-line values whose name suggests a secret are replaced by REDACTED.
sysfs links are kept only where they carry meaning (a disk's place on the bus: block/<disk>,
bus/pci/devices/<id>, dev/block/<maj:min>); links that point back up their own path (a disk's `device`) are
left out, so the tree has no cycles; everything else is a plain file or directory.
After capturing, write OUT/nvml.json (the NVML simulator's GPU description) when the host has GPUs; a host
without NVIDIA devices gets {"library": "missing"} so a replay never reads a real GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from agent.hostfs import HostPaths
from agent.inspect.block import PCI_ADDRESS_RE, device_dir, device_path_of, disk_names
from agent.inspect.rival_tuners import match_process
from agent.inspect.sysctl import SYSCTL_KEYS

KERNEL_KEYS = ("kernel.osrelease", "kernel.version", "kernel.hostname")
SECRET_WORDS = re.compile(r"pass|token|secret|key|auth|cred", re.IGNORECASE)
TOPOLOGY_FILES = ("physical_package_id", "core_id", "die_id", "thread_siblings_list", "core_cpus_list",
                  "core_siblings_list", "package_cpus_list")
CPUFREQ_FILES = ("scaling_governor", "scaling_available_governors", "scaling_driver",
                 "energy_performance_preference", "energy_performance_available_preferences", "scaling_min_freq",
                 "scaling_max_freq", "cpuinfo_min_freq", "cpuinfo_max_freq", "affected_cpus", "related_cpus")
HUGEPAGE_FILES = ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages",
                  "nr_overcommit_hugepages", "nr_hugepages_mempolicy")
NODE_HUGEPAGE_FILES = ("nr_hugepages", "free_hugepages", "surplus_hugepages")
DISK_FILES = ("size", "removable", "ro", "dev", "serial", "loop/backing_file")
QUEUE_FILES = ("read_ahead_kb", "scheduler", "nr_requests", "rotational", "logical_block_size",
               "physical_block_size", "max_sectors_kb", "max_hw_sectors_kb", "nomerges", "rq_affinity", "add_random")
DEVICE_FILES = ("model", "name", "serial", "vendor", "numa_node")
PCI_FILES = ("numa_node", "vendor", "device", "class", "local_cpulist")
NVIDIA_VENDOR = "0x10de"


class Capture:
    def __init__(self, src: HostPaths, out: Path) -> None:
        self.src = src
        self.out = out
        self.files = 0

    def copy(self, source: Path, dest: Path, text: str | None = None) -> bool:
        """Copy one file's contents (not its links), keeping whether it is writable; False if unreadable."""
        if text is None:
            try:
                text = source.read_text(errors="replace")
            except OSError:
                return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        try:
            writable = os.stat(source).st_mode & 0o200
        except OSError:
            writable = 0o200
        dest.chmod(0o644 if writable else 0o444)
        self.files += 1
        return True

    def proc(self, rel: str, text: str | None = None) -> bool:
        return self.copy(self.src.proc(rel), self.out / "proc" / rel, text)

    def sys(self, rel: str) -> bool:
        return self.copy(self.src.sys(rel), self.out / "sys" / rel)

    def link(self, rel: str, target_rel: str) -> None:
        """OUT/sys/<rel> -> OUT/sys/<target_rel>, as a relative link like sysfs's own."""
        dest = self.out / "sys" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():
            return
        dest.symlink_to(os.path.relpath(self.out / "sys" / target_rel, dest.parent))

    def sys_rel(self, path: Path) -> str | None:
        """Where a source sysfs path really lives, relative to the source sysfs root."""
        real = os.path.realpath(path)
        root = os.path.realpath(self.src.sysfs)
        if os.path.commonpath([real, root]) != root:
            return None
        return os.path.relpath(real, root)


def redact_cmdline(cmdline: str) -> str:
    out = []
    for arg in cmdline.split():
        key, sep, _value = arg.partition("=")
        out.append(f"{key}=REDACTED" if sep and SECRET_WORDS.search(key) else arg)
    return " ".join(out) + "\n"


def capture_proc(cap: Capture, hostname: str | None) -> None:
    for rel in ("cpuinfo", "meminfo", "self/limits"):
        cap.proc(rel)
    cmdline = (cap.src.proc("cmdline")).read_text(errors="replace") if cap.src.proc("cmdline").exists() else None
    if cmdline is not None:
        cap.proc("cmdline", redact_cmdline(cmdline))
    for key in (*KERNEL_KEYS, *SYSCTL_KEYS):
        rel = "sys/" + key.replace(".", "/")
        text = f"{hostname}\n" if key == "kernel.hostname" and hostname else None
        cap.copy(cap.src.proc(rel), cap.out / "proc" / rel, text)
    for entry in sorted(os.scandir(cap.src.proc()), key=lambda e: e.name):
        if not entry.name.isdigit():
            continue
        try:
            comm = Path(entry.path, "comm").read_text().strip()
            argv = [a for a in Path(entry.path, "cmdline").read_text().split("\0") if a]
        except OSError:
            continue
        if match_process(comm, argv):
            cap.proc(f"{entry.name}/comm")
            cap.proc(f"{entry.name}/cmdline")


def capture_cpus(cap: Capture) -> None:
    base = "devices/system/cpu"
    for name in ("online", "present", "possible", "smt/active", "smt/control"):
        cap.sys(f"{base}/{name}")
    for cpu_dir in sorted(cap.src.sys(base).glob("cpu[0-9]*")):
        cpu = cpu_dir.name
        cap.sys(f"{base}/{cpu}/online")
        for f in TOPOLOGY_FILES:
            cap.sys(f"{base}/{cpu}/topology/{f}")
        for f in CPUFREQ_FILES:  # cpuN/cpufreq is a link to ../cpufreq/policyN: stored as a plain directory
            cap.sys(f"{base}/{cpu}/cpufreq/{f}")


def capture_memory(cap: Capture) -> None:
    node_base = "devices/system/node"
    for name in ("online", "possible", "has_cpu", "has_memory", "has_normal_memory"):
        cap.sys(f"{node_base}/{name}")
    for node_dir in sorted(cap.src.sys(node_base).glob("node[0-9]*")):
        node = node_dir.name
        for f in ("cpulist", "meminfo", "distance"):
            cap.sys(f"{node_base}/{node}/{f}")
        for size_dir in sorted((node_dir / "hugepages").glob("hugepages-*kB")):
            for f in NODE_HUGEPAGE_FILES:
                cap.sys(f"{node_base}/{node}/hugepages/{size_dir.name}/{f}")
    for size_dir in sorted(cap.src.sys("kernel/mm/hugepages").glob("hugepages-*kB")):
        for f in HUGEPAGE_FILES:
            cap.sys(f"kernel/mm/hugepages/{size_dir.name}/{f}")
    for f in ("enabled", "defrag", "khugepaged/defrag"):
        cap.sys(f"kernel/mm/transparent_hugepage/{f}")
    if cap.src.root("run/tlp").is_dir():
        (cap.out / "run/tlp").mkdir(parents=True, exist_ok=True)


def capture_pci(cap: Capture, pci_rel: str) -> None:
    for f in PCI_FILES:
        cap.sys(f"{pci_rel}/{f}")
    cap.link(f"bus/pci/devices/{pci_rel.rsplit('/', 1)[-1]}", pci_rel)


def capture_disks(cap: Capture) -> None:
    for name in disk_names(cap.src):
        disk = cap.src.sys("block", name)
        rel = cap.sys_rel(disk)
        if rel is None or rel == f"block/{name}":
            rel = f"devices/virtual/block/{name}"  # the source is not a link: give it a virtual home
        for f in DISK_FILES:
            cap.copy(disk / f, cap.out / "sys" / rel / f)
        for f in QUEUE_FILES:
            cap.copy(disk / "queue" / f, cap.out / "sys" / rel / "queue" / f)
        cap.link(f"block/{name}", rel)
        dev = (cap.out / "sys" / rel / "dev")
        if dev.exists():
            cap.link(f"dev/block/{dev.read_text().strip()}", rel)
        parent = device_dir(cap.src, disk, device_path_of(cap.src, disk))
        device_rel = cap.sys_rel(parent) if parent.is_dir() else None
        if device_rel is not None and device_rel != rel:
            # no `device` link: it points back up the disk's own path (a cycle); inspection derives it
            for f in DEVICE_FILES:
                cap.copy(parent / f, cap.out / "sys" / device_rel / f)
        parts = rel.split("/")
        for i in range(len(parts) - 1, -1, -1):
            if PCI_ADDRESS_RE.match(parts[i]):
                capture_pci(cap, "/".join(parts[: i + 1]))
                break


def capture_gpus(cap: Capture) -> int:
    """PCI display controllers from NVIDIA: their sysfs side (NUMA node), found by vendor and class."""
    count = 0
    root = cap.src.sys("bus/pci/devices")
    for dev in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            vendor = (dev / "vendor").read_text().strip()
            klass = (dev / "class").read_text().strip()
        except OSError:
            continue
        if vendor == NVIDIA_VENDOR and klass.startswith(("0x0300", "0x0302")):
            rel = cap.sys_rel(dev)
            if rel:
                capture_pci(cap, rel)
                count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="new scenario directory (must not exist or be empty)")
    ap.add_argument("--procfs", help="source procfs root (default /proc)")
    ap.add_argument("--sysfs", help="source sysfs root (default /sys)")
    ap.add_argument("--rootfs", help="source root filesystem (default /)")
    ap.add_argument("--hostname", help="record this hostname instead of the real one")
    args = ap.parse_args(argv)
    src = HostPaths.from_options(args.procfs, args.sysfs, args.rootfs, env={}).check()
    if args.out.exists() and any(args.out.iterdir()):
        print(f"capture-host: error: {args.out} exists and is not empty", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    cap = Capture(src, args.out)
    capture_proc(cap, args.hostname)
    capture_cpus(cap)
    capture_memory(cap)
    capture_disks(cap)
    gpus = capture_gpus(cap)
    nvml = args.out / "nvml.json"
    if gpus == 0:
        nvml.write_text(json.dumps({"library": "missing"}) + "\n")
    print(f"captured {cap.files} files into {args.out}")
    if gpus:
        print(f"{gpus} NVIDIA GPU(s) found: write {nvml} (the NVML simulator's GPU description) to replay them")
    print(f"replay: hosttune inspect --rootfs {args.out} --procfs {args.out}/proc --sysfs {args.out}/sys "
          f"--nvml-sim {nvml}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
