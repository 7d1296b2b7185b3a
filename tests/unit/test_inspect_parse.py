"""Parsers for the procfs/sysfs formats inspection reads: what the kernel writes parses, anything else is bad input
naming its file (and line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import InputError
from agent.inspect import parse
from agent.inspect.block import kind_of
from agent.inspect.hugepages import size_name
from agent.inspect.kernel import parse_cmdline, split_cmdline
from agent.inspect.rival_tuners import match_process


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "cpus"), [
    ("0-3,8,10-11\n", [0, 1, 2, 3, 8, 10, 11]),
    ("0\n", [0]),
    ("\n", []),
    ("16-31,48-63", list(range(16, 32)) + list(range(48, 64))),
    ("5,1-2", [1, 2, 5]),
])
def test_cpu_list_files(tmp_path: Path, text: str, cpus: list[int]) -> None:
    assert parse.read_cpu_list(write(tmp_path, "cpulist", text)) == cpus


@pytest.mark.parametrize("text", ["0-x", "3-1", "zero", "1,,2", "0-3 7"])
def test_garbled_cpu_list_names_the_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "online", text + "\n")
    with pytest.raises(InputError) as err:
        parse.read_cpu_list(path)
    assert err.value.path == str(path)


def test_absent_files_are_no_data_not_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert parse.read_cpu_list(missing) is None
    assert parse.meminfo(missing) is None
    assert parse.choice(missing) == (None, [])
    assert parse.count(missing) == 0
    assert parse.numa_node(missing) is None
    assert parse.words(missing) == []


@pytest.mark.parametrize(("text", "active", "choices"), [
    ("always [madvise] never\n", "madvise", ["always", "madvise", "never"]),
    ("[none] mq-deadline kyber bfq\n", "none", ["none", "mq-deadline", "kyber", "bfq"]),
    ("none [mq-deadline] kyber bfq\n", "mq-deadline", ["none", "mq-deadline", "kyber", "bfq"]),
    ("none\n", "none", ["none"]),  # a queue without an elevator
])
def test_choice_files(tmp_path: Path, text: str, active: str, choices: list[str]) -> None:
    assert parse.choice(write(tmp_path, "scheduler", text)) == (active, choices)


@pytest.mark.parametrize("text", ["always madvise never\n", "[always] [madvise] never\n"])
def test_choice_file_without_exactly_one_active_is_bad_input(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "enabled", text)
    with pytest.raises(InputError, match="bracketed") as err:
        parse.choice(path)
    assert err.value.path == str(path)


def test_meminfo_units_and_node_prefix(tmp_path: Path) -> None:
    path = write(tmp_path, "meminfo", "MemTotal:       24684084 kB\nHugePages_Total:      12\n"
                 "Hugepagesize:       2048 kB\n")
    assert parse.meminfo(path) == {"MemTotal": 24684084 * 1024, "HugePages_Total": 12, "Hugepagesize": 2048 * 1024}
    node = write(tmp_path, "node_meminfo", "Node 1 MemTotal:       1000 kB\nNode 1 MemFree:          10 kB\n")
    assert parse.meminfo(node) == {"MemTotal": 1024000, "MemFree": 10240}


@pytest.mark.parametrize(("text", "line"), [
    ("MemTotal: abc kB\n", 1),
    ("MemTotal:  1 kB\nMemFree 12 kB\n", 2),
    ("MemTotal:  1 kB\nMemFree:  12 MB\n", 2),
])
def test_garbled_meminfo_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, "meminfo", text)
    with pytest.raises(InputError) as err:
        parse.meminfo(path)
    assert (err.value.path, err.value.line) == (str(path), line)
    assert f"{path}:{line}" in str(err.value)


def test_counts_and_numa_nodes(tmp_path: Path) -> None:
    assert parse.count(write(tmp_path, "nr", "16\n")) == 16
    with pytest.raises(InputError):
        parse.count(write(tmp_path, "nr2", "lots\n"))
    with pytest.raises(InputError):
        parse.count(write(tmp_path, "nr3", "-4\n"))
    assert parse.numa_node(write(tmp_path, "numa", "-1\n")) is None
    assert parse.numa_node(write(tmp_path, "numa1", "1\n")) == 1
    assert parse.int_list(write(tmp_path, "distance", "10 21\n")) == [10, 21]
    with pytest.raises(InputError):
        parse.int_list(write(tmp_path, "distance2", "10 far\n"))


def test_whitespace_normalisation() -> None:
    assert parse.normalize_space("32768\t60999\n") == "32768 60999"
    assert parse.normalize_space("4096\t131072\t6291456\n") == "4096 131072 6291456"


def test_cmdline_like_the_kernel() -> None:
    line = 'BOOT_IMAGE=/vmlinuz ro quiet isolcpus="1-3, 5" hugepages=4 hugepages=16 -- --init-arg x=1\n'
    assert split_cmdline(line)[3] == "isolcpus=1-3, 5"
    assert parse_cmdline(line) == {"BOOT_IMAGE": "/vmlinuz", "ro": None, "quiet": None, "isolcpus": "1-3, 5",
                                   "hugepages": "16"}
    assert parse_cmdline("") == {}
    assert parse_cmdline("a=b=c") == {"a": "b=c"}


@pytest.mark.parametrize(("size_kb", "name"), [(2048, "2M"), (1048576, "1G"), (64, "64K"), (32768, "32M"),
                                                (16777216, "16G"), (1536, "1536K")])
def test_hugepage_size_names(size_kb: int, name: str) -> None:
    assert size_name(size_kb) == name


@pytest.mark.parametrize(("comm", "argv", "name"), [
    ("tuned", ["/usr/bin/python3", "-Es", "/usr/sbin/tuned", "-l", "-P"], "tuned"),
    ("python3", ["/usr/bin/python3", "-Es", "/usr/sbin/tuned"], "tuned"),
    ("irqbalance", ["/usr/sbin/irqbalance", "--foreground"], "irqbalance"),
    ("power-profiles-", ["/usr/libexec/power-profiles-daemon"], "power-profiles-daemon"),
    ("numad", [], "numad"),
    ("bpftune", ["/usr/sbin/bpftune"], "bpftune"),
    ("python3", ["/usr/bin/python3", "tuned_report.py"], None),
    ("bash", ["bash", "-c", "echo tuned"], None),
    ("kworker/0:1", [], None),
])
def test_known_tuners_are_recognised(comm: str, argv: list[str], name: str | None) -> None:
    assert match_process(comm, argv) == name


@pytest.mark.parametrize(("name", "path", "vendor", "kind"), [
    ("nvme0n1", "devices/pci0000:00/0000:00:01.0/0000:01:00.0/nvme/nvme0/nvme0n1", None, "nvme"),
    ("sda", "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda", "ATA     ", "sata"),
    ("sda", "", "ATA", "sata"),  # a copy without links: the SCSI vendor still says libata
    ("sdb", "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb", "SanDisk",
     "usb"),
    ("sdc", "devices/pci0000:00/0000:00:05.0/virtio2/host0/target0:0:1/0:0:1:0/block/sdc", "QEMU", "scsi"),
    ("vda", "devices/pci0000:00/0000:00:02.0/virtio1/block/vda", None, "virtio"),
    ("loop3", "devices/virtual/block/loop3", None, "loop"),
    ("dm-0", "devices/virtual/block/dm-0", None, "dm"),
    ("md127", "devices/virtual/block/md127", None, "md"),
    ("nullb0", "devices/virtual/block/nullb0", None, "null_blk"),
    ("zram0", "devices/virtual/block/zram0", None, "zram"),
    ("mmcblk0", "devices/pci0000:00/0000:00:14.5/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0", None, "mmc"),
    ("pmem0", "devices/LNXSYSTM:00/ndbus0/region0/namespace0.0/block/pmem0", None, "other"),
])
def test_block_kinds(name: str, path: str, vendor: str | None, kind: str) -> None:
    assert kind_of(name, path, vendor) == kind
