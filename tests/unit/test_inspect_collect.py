"""collect() on fixture trees: facts checked against what each scenario was built to be (not against the golden
files), containment of a broken collector, and the "no data here" paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import InputError
from agent.hostfs import HostPaths
from agent.inspect import collect
from agent.inspect.registry import COLLECTORS, Collector
from tests.support.inspect_cli import FIXTURE_HOSTS


def tree(name: str) -> HostPaths:
    root = FIXTURE_HOSTS / name
    return HostPaths(procfs=root / "proc", sysfs=root / "sys", rootfs=root)


def no_gpus() -> object:
    from agent.gpu.nvml import open_nvml

    return open_nvml(FIXTURE_HOSTS / "laptop-sata" / "nvml.json")


def minimal_tree(root: Path) -> HostPaths:
    """The least a host needs: meminfo and an online CPU list. Everything else is absent hardware."""
    (root / "proc").mkdir(parents=True)
    (root / "proc/meminfo").write_text("MemTotal:  2048 kB\nMemFree:  1024 kB\n")
    (root / "sys/devices/system/cpu").mkdir(parents=True)
    (root / "sys/devices/system/cpu/online").write_text("0-3\n")
    return HostPaths(procfs=root / "proc", sysfs=root / "sys", rootfs=root)


def test_server_topology_is_two_sockets_with_smt_32_apart() -> None:
    facts = collect(tree("server-2s-8gpu"), no_gpus())
    cpu = facts.cpu
    assert (cpu.sockets, cpu.cores, cpu.threads) == (2, 32, 64)
    assert cpu.smt_active is True
    assert cpu.smt_siblings == [[i, i + 32] for i in range(32)]
    nodes = {n.id: n for n in cpu.numa_nodes}
    assert nodes[0].cpus == [*range(0, 16), *range(32, 48)]
    assert nodes[1].cpus == [*range(16, 32), *range(48, 64)]
    assert nodes[0].distances == [10, 21] and nodes[1].distances == [21, 10]
    assert "amx_bf16" in cpu.flags and "avx512_bf16" in cpu.flags


def test_server_disks_sit_on_their_sockets() -> None:
    facts = collect(tree("server-2s-8gpu"), no_gpus())
    disks = {d.name: d for d in facts.block_devices}
    assert set(disks) == {"nvme0n1", "nvme1n1", "loop1"}  # loop0 has nothing attached
    assert (disks["nvme0n1"].numa_node, disks["nvme0n1"].pci_address) == (0, "0000:01:00.0")
    assert (disks["nvme1n1"].numa_node, disks["nvme1n1"].pci_address) == (1, "0000:81:00.0")
    assert disks["nvme0n1"].size_bytes == 7501476528 * 512
    assert disks["nvme0n1"].scheduler == "none" and disks["nvme0n1"].kind == "nvme"
    assert disks["loop1"].kind == "loop" and disks["loop1"].numa_node is None


def test_server_hugepages_per_node_add_up() -> None:
    facts = collect(tree("server-2s-8gpu"), no_gpus())
    pools = {h.name: h for h in facts.hugepages}
    assert set(pools) == {"2M", "1G"}
    for pool in pools.values():
        assert sum(p.total for p in pool.per_node.values()) == pool.total
        assert sum(p.free for p in pool.per_node.values()) == pool.free
    assert (pools["2M"].total, pools["2M"].free, pools["2M"].reserved) == (8192, 6144, 512)


def test_server_conflicts_cpufreq_kernel() -> None:
    facts = collect(tree("server-2s-8gpu"), no_gpus())
    assert [(c.name, c.pid) for c in facts.conflicts] == [("irqbalance", 1432), ("tuned", 2101)]
    tuned = facts.conflicts[1]
    assert {"sysctl", "thp", "cpufreq", "block"} <= set(tuned.manages)
    assert facts.cpufreq.available and facts.cpufreq.driver == "intel_pstate"
    assert [c.cpu for c in facts.cpufreq.cpus] == list(range(64))
    assert {c.energy_performance_preference for c in facts.cpufreq.cpus} == {"balance_performance"}
    assert facts.kernel.cmdline_params["hugepages"] == "16"
    assert facts.kernel.cmdline_params["dyndbg"] == "module nvme +p"
    assert facts.sysctl["net.ipv4.ip_local_port_range"] == "32768 60999"
    assert facts.sysctl["vm.nr_hugepages"] == "8192"


def test_laptop_without_numa_support_is_one_node_with_all_memory() -> None:
    paths = tree("laptop-sata")
    assert not paths.sys("devices/system/node").exists()
    facts = collect(paths, no_gpus())
    assert len(facts.cpu.numa_nodes) == 1
    node = facts.cpu.numa_nodes[0]
    assert (node.id, node.cpus, node.distances) == (0, list(range(8)), [10])
    assert node.memory_total_bytes == facts.memory.total_bytes
    sda = next(d for d in facts.block_devices if d.name == "sda")
    assert (sda.kind, sda.rotational, sda.scheduler, sda.numa_node) == ("sata", False, "mq-deadline", None)
    assert facts.cpufreq.available and facts.cpufreq.cpus[0].energy_performance_preference is None
    assert [c.name for c in facts.conflicts] == ["power-profiles-daemon"]
    assert facts.gpus == [] and facts.gpu_status.available is False


def test_absent_hardware_is_not_an_error(tmp_path: Path) -> None:
    facts = collect(minimal_tree(tmp_path), no_gpus())
    assert facts.errors == []
    assert facts.cpu.online_cpus == [0, 1, 2, 3]
    assert facts.cpu.numa_nodes[0].cpus == [0, 1, 2, 3]
    assert facts.memory.total_bytes == 2048 * 1024
    assert facts.hugepages == [] and facts.block_devices == [] and facts.conflicts == []
    assert facts.thp.available is False
    assert (facts.cpufreq.available, facts.cpufreq.reason) == (False, "no cpufreq driver")
    assert facts.sysctl == {}


def test_a_broken_collector_is_contained_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(paths: HostPaths) -> object:
        raise RuntimeError("sysfs went away")

    original = COLLECTORS["thp"]
    monkeypatch.setitem(COLLECTORS, "thp", Collector(field="thp", collect=explode, fallback=original.fallback))
    facts = collect(tree("laptop-sata"), no_gpus())
    assert facts.errors == ["thp: RuntimeError: sysfs went away"]
    assert facts.thp.available is False
    assert facts.memory.total_bytes > 0 and facts.block_devices  # the other collectors still reported


def test_a_malformed_file_is_bad_input_not_contained(tmp_path: Path) -> None:
    paths = minimal_tree(tmp_path)
    pool = paths.sys("kernel/mm/hugepages/hugepages-2048kB")
    pool.mkdir(parents=True)
    (pool / "nr_hugepages").write_text("many\n")
    with pytest.raises(InputError) as err:
        collect(paths, no_gpus())
    assert err.value.path == str(pool / "nr_hugepages")


def test_missing_root_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="procfs root"):
        collect(HostPaths(procfs=tmp_path / "absent", sysfs=tmp_path, rootfs=tmp_path))


def test_loop_devices_only_when_attached(tmp_path: Path) -> None:
    paths = minimal_tree(tmp_path)
    for name, size, backing in (("loop0", 0, None), ("loop1", 2048, None), ("loop2", 0, "/srv/img")):
        d = paths.sys("devices/virtual/block", name)
        (d / "queue").mkdir(parents=True)
        (d / "size").write_text(f"{size}\n")
        (d / "queue/read_ahead_kb").write_text("128\n")
        if backing:
            (d / "loop").mkdir()
            (d / "loop/backing_file").write_text(backing + "\n")
        paths.sys("block").mkdir(exist_ok=True)
        (paths.sys("block") / name).symlink_to(f"../devices/virtual/block/{name}")
    facts = collect(paths, no_gpus())
    assert [d.name for d in facts.block_devices] == ["loop1", "loop2"]


@pytest.mark.parametrize("scenario", ["vm-1node", "server-2s-8gpu", "laptop-sata"])
def test_fixture_links_are_relative_and_stay_inside_their_tree(scenario: str) -> None:
    """Links keep a disk's place on the bus, like sysfs; they must survive a checkout anywhere and any copy, and
    none may point back up its own path (real sysfs has such cycles; they stall every tool that walks a tree)."""
    root = (FIXTURE_HOSTS / scenario).resolve()
    links = [Path(d, n) for d, dirs, files in os.walk(root) for n in dirs + files if os.path.islink(Path(d, n))]
    assert links, "disks are found through sys/block links"
    for link in links:
        target = os.readlink(link)
        assert not os.path.isabs(target), f"{link} -> {target} is absolute"
        resolved = Path(os.path.realpath(link))
        assert resolved.is_relative_to(root) and resolved.exists(), f"{link} -> {target} leaves the tree or dangles"
        assert not Path(os.path.realpath(link.parent)).is_relative_to(resolved), f"{link} -> {target} is a cycle"


def test_tlp_state_dir_counts_as_running(tmp_path: Path) -> None:
    paths = minimal_tree(tmp_path)
    (tmp_path / "run/tlp").mkdir(parents=True)
    facts = collect(paths, no_gpus())
    assert [(c.name, c.pid) for c in facts.conflicts] == [("tlp", None)]
    assert "cpufreq" in facts.conflicts[0].manages


def test_a_process_that_exits_mid_scan_is_skipped(tmp_path: Path) -> None:
    paths = minimal_tree(tmp_path)
    (tmp_path / "proc/77").mkdir()  # a pid directory whose files are gone
    (tmp_path / "proc/78").mkdir()
    (tmp_path / "proc/78/comm").write_text("numad\n")
    (tmp_path / "proc/78/cmdline").write_bytes(b"/usr/bin/numad\0-i\x0015\0")
    facts = collect(paths, no_gpus())
    assert [(c.name, c.pid, c.detail) for c in facts.conflicts] == [("numad", 78, "/usr/bin/numad -i 15")]
