"""The compare's "host untouched" check (agent/bench/hostsnap.py) on a fixture host tree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent.bench.hostsnap import HostTouched, check_untouched, diff_snapshot, take_snapshot
from agent.errors import HostError
from agent.hostfs import HostPaths
from agent.tuning.state import StateDir

KEYS = ["vm.swappiness", "kernel.numa_balancing"]


@pytest.fixture
def tree(host_tree: Callable[[str], HostPaths]) -> HostPaths:
    return host_tree("server")


def test_snapshot_reads_what_hosttune_tunes(tree: HostPaths) -> None:
    snap = take_snapshot(tree, KEYS)
    assert snap["sysctl:vm.swappiness"] == "60"
    assert snap["sysctl:kernel.numa_balancing"] == "1"
    assert snap["thp:enabled"] == "always [madvise] never"
    assert snap["thp:defrag"].endswith("[madvise] never")
    assert snap["hugepages:hugepages-2048kB/nr_hugepages"] == "8"
    assert snap["hugepages:node1/hugepages-2048kB/nr_hugepages"] == "8"
    assert snap["block:nvme0n1/read_ahead_kb"] == "128"
    assert snap["block:sda/scheduler"] == "none [mq-deadline] bfq"
    assert snap["cpufreq:cpu3/scaling_governor"] == "powersave"
    assert snap["mounts:hugetlbfs"] == "(none)"
    assert not any(k.startswith("block:loop") for k in snap)
    assert "sysctl:vm.dirty_ratio" not in snap   # only the sysctls the policy names


@pytest.mark.parametrize(("rel", "value", "key"), [
    ("proc/sys/vm/swappiness", "10\n", "sysctl:vm.swappiness"),
    ("sys/kernel/mm/transparent_hugepage/enabled", "[always] madvise never\n", "thp:enabled"),
    ("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "60\n", "hugepages:hugepages-2048kB/nr_hugepages"),
    ("sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages", "2\n",
     "hugepages:node0/hugepages-2048kB/nr_hugepages"),
    ("sys/block/nvme0n1/queue/read_ahead_kb", "4096\n", "block:nvme0n1/read_ahead_kb"),
    ("sys/block/sda/queue/scheduler", "none mq-deadline [bfq]\n", "block:sda/scheduler"),
    ("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "performance\n", "cpufreq:cpu0/scaling_governor"),
])
def test_a_changed_value_is_detected_and_named(tree: HostPaths, tmp_path: Path, rel: str, value: str,
                                               key: str) -> None:
    before = take_snapshot(tree, KEYS)
    check_untouched(before, tree, KEYS, [tmp_path / "state"])   # unchanged: passes
    root = tree.procfs.parent
    (root / rel).write_text(value)
    with pytest.raises(HostTouched) as err:
        check_untouched(before, tree, KEYS, [tmp_path / "state"])
    assert key in str(err.value)
    assert [line.split(":")[0] + ":" + line.split(":")[1] for line in diff_snapshot(before, take_snapshot(tree, KEYS))
            ] == [key]


def test_a_hugetlbfs_mount_left_behind_is_detected(tree: HostPaths) -> None:
    mounts = tree.proc("mounts")
    mounts.write_text("proc /proc proc rw 0 0\n")
    before = take_snapshot(tree, KEYS)
    mounts.write_text("proc /proc proc rw 0 0\nnone /var/lib/hosttune/weights hugetlbfs rw,pagesize=2M 0 0\n")
    with pytest.raises(HostTouched, match="mounts:hugetlbfs: was '\\(none\\)', now '/var/lib/hosttune/weights'"):
        check_untouched(before, tree, KEYS, [])


def test_an_open_journal_transaction_is_refused(tree: HostPaths, tmp_path: Path) -> None:
    before = take_snapshot(tree, KEYS)
    state = StateDir(tmp_path / "state").ensure()
    journal = state.journal()
    journal.begin("apply", policy="llm-cpu-throughput")
    with pytest.raises(HostTouched, match="open apply transaction \\(llm-cpu-throughput\\)"):
        check_untouched(before, tree, KEYS, [tmp_path / "state"])
    journal.finish("committed")
    check_untouched(before, tree, KEYS, [tmp_path / "state"])


def test_a_sysctl_that_appears_or_goes_is_a_difference(tree: HostPaths) -> None:
    before = take_snapshot(tree, [*KEYS, "vm.not_here"])
    assert before["sysctl:vm.not_here"] == "(absent)"
    (tree.procfs / "sys/vm/swappiness").unlink()
    assert diff_snapshot(before, take_snapshot(tree, [*KEYS, "vm.not_here"])) == [
        "sysctl:vm.swappiness: was '60', now '(absent)'"]


def test_a_host_a_hosttune_already_tuned_is_refused(tmp_path: Path) -> None:
    from agent.bench.hostsnap import check_not_tuned
    from agent.tuning.journal import Applied
    from agent.tuning.state import StateDir

    check_not_tuned(tmp_path / "absent")
    state = StateDir(tmp_path / "state").ensure()
    journal = state.journal()
    journal.save()
    check_not_tuned(state.path)  # a journal with nothing applied (reverted): fine
    journal.data.applied = Applied(policy="llm-inference", txn="t1")
    journal.save()
    with pytest.raises(HostError, match=r"applied policy 'llm-inference'.*untouched"):
        check_not_tuned(state.path)


def test_the_work_dir_must_be_owned_by_root_and_not_group_or_other_writable(tmp_path: Path) -> None:
    import os

    from agent.bench.hostsnap import check_work_dir

    me = os.geteuid()
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    check_work_dir(work, me)
    with pytest.raises(HostError, match="owned by uid"):
        check_work_dir(work, me + 1)
    for mode in (0o770, 0o702, 0o777):
        work.chmod(mode)
        with pytest.raises(HostError, match="group- or other-writable"):
            check_work_dir(work, me)
    work.chmod(0o755)
    check_work_dir(work, me)
    (tmp_path / "link").symlink_to(work)
    with pytest.raises(HostError, match="not a directory"):
        check_work_dir(tmp_path / "link", me)
    with pytest.raises(HostError, match="cannot be read"):
        check_work_dir(tmp_path / "missing", me)
