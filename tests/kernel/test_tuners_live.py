"""The tuners on the real kernel, as root, through the real CLI: sysctls (net.* inside `unshare -n`), 2M
hugepages (global and node0, with the in-use floor), THP, and queue settings of fresh loop devices. Every test
reverts through hosttune, asserts the original bytes are back, and restores directly in `finally` if not."""

from __future__ import annotations

import json
import mmap
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.tuning_support import (
    PROC_SYS,
    SYS,
    fresh_loop_device,
    hosttune,
    kernel_tier_lock,
    other_choice,
    restore,
    snapshot,
)

pytestmark = pytest.mark.kernel

MAP_HUGETLB = 0x40000
HP2M = SYS / "kernel/mm/hugepages/hugepages-2048kB"
NODE0_2M = SYS / "devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"
THP = SYS / "kernel/mm/transparent_hugepage"


@pytest.fixture(autouse=True)
def serialized() -> Iterator[None]:
    with kernel_tier_lock():
        yield


def write_policy(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(text)
    return p


def test_global_sysctls(tmp_path: Path) -> None:
    files = [PROC_SYS / "vm/swappiness", PROC_SYS / "vm/dirty_ratio", PROC_SYS / "vm/max_map_count"]
    before = snapshot(files)
    swappiness = 7 if before[str(files[0])] != b"7\n" else 9
    floor = int(before[str(files[2])]) + 1000
    policy = write_policy(tmp_path, f"name: k-sysctl\nsysctl:\n  vm.swappiness: {swappiness}\n"
                                    f"  vm.max_map_count: \">={floor}\"\n  vm.dirty_ratio: \"<=100\"\n")
    state = tmp_path / "state"
    try:
        r = hosttune(state, "apply", str(policy), "--json")
        assert r.returncode == 0, r.stderr
        assert (PROC_SYS / "vm/swappiness").read_text() == f"{swappiness}\n"
        assert int((PROC_SYS / "vm/max_map_count").read_text()) == floor
        # "<=100" held already (dirty_ratio is at most 100 by definition): untouched
        assert (PROC_SYS / "vm/dirty_ratio").read_bytes() == before[str(files[1])]
        assert json.loads(r.stdout)["writes"] == 2
        assert hosttune(state, "verify").returncode == 0
        (PROC_SYS / "vm/swappiness").write_text("33")
        assert hosttune(state, "verify").returncode == 1
        # someone else's value: revert leaves it (exit 3) and restores the rest; --force restores it too
        r = hosttune(state, "revert")
        assert r.returncode == 3 and "SKIPPED   sysctl:vm.swappiness: now '33'" in r.stdout, r.stdout + r.stderr
        assert (PROC_SYS / "vm/swappiness").read_text() == "33\n"
        assert (PROC_SYS / "vm/max_map_count").read_bytes() == before[str(files[2])]
        r = hosttune(state, "revert", "--force")
        assert r.returncode == 0, r.stderr
        assert snapshot(files) == before
    finally:
        restore(before)


def test_rejected_write_rolls_back_earlier_ones(tmp_path: Path) -> None:
    """The kernel refuses vm.dirty_ratio=500 (EINVAL) after swappiness was already written: both end as before."""
    files = [PROC_SYS / "vm/swappiness", PROC_SYS / "vm/dirty_ratio"]
    before = snapshot(files)
    policy = write_policy(tmp_path, "name: k-bad\nsysctl:\n  vm.swappiness: 3\n  vm.dirty_ratio: 500\n")
    try:
        r = hosttune(tmp_path / "state", "apply", str(policy))
        assert r.returncode == 1
        assert "vm.dirty_ratio" in r.stderr and "rolled back 2 writes" in r.stderr, r.stderr
        assert f"{policy}:4" in r.stderr
        assert snapshot(files) == before
    finally:
        restore(before)


def test_missing_sysctl_is_bad_input_and_writes_nothing(tmp_path: Path) -> None:
    before = snapshot([PROC_SYS / "vm/swappiness"])
    policy = write_policy(tmp_path, "name: k-missing\nsysctl:\n  vm.swappiness: 3\n  vm.no_such_knob: 1\n")
    r = hosttune(tmp_path / "state", "apply", str(policy))
    assert r.returncode == 2
    assert r.stderr.startswith(f"hosttune: error: {policy}:4: sysctl.vm.no_such_knob: no sysctl")
    assert snapshot([PROC_SYS / "vm/swappiness"]) == before


NETNS_STEPS = """
import json, subprocess, sys
argv, state, policy = sys.argv[1:4], sys.argv[4], sys.argv[5]
def read(k): return open('/proc/sys/net/' + k).read()
out = {'before': [read('core/somaxconn'), read('ipv4/ip_local_port_range')]}
run = lambda *a: subprocess.run([*argv, *a, '--state-dir', state], capture_output=True, text=True, timeout=120)
r = run('apply', policy); out['apply'] = [r.returncode, r.stderr]
out['applied'] = [read('core/somaxconn'), read('ipv4/ip_local_port_range')]
out['verify'] = run('verify').returncode
r = run('revert'); out['revert'] = [r.returncode, r.stderr]
out['after'] = [read('core/somaxconn'), read('ipv4/ip_local_port_range')]
print(json.dumps(out))
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) not installed")
def test_net_sysctls_in_a_private_network_namespace(tmp_path: Path) -> None:
    host_net = snapshot([PROC_SYS / "net/core/somaxconn", PROC_SYS / "net/ipv4/ip_local_port_range"])
    policy = write_policy(tmp_path, "name: k-net\nsysctl:\n  net.core.somaxconn: \">=8192\"\n"
                                    "  net.ipv4.ip_local_port_range: \"20000   50000\"\n")
    r = subprocess.run(["unshare", "-n", "--", sys.executable, "-c", NETNS_STEPS, sys.executable, "-m", "agent",
                        str(tmp_path / "state"), str(policy)],
                       capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["apply"][0] == 0, out["apply"]
    assert out["applied"] == ["8192\n", "20000\t50000\n"]
    assert out["verify"] == 0
    assert out["revert"][0] == 0 and out["after"] == out["before"]
    # the host's own namespace never saw any of it
    assert snapshot([PROC_SYS / "net/core/somaxconn", PROC_SYS / "net/ipv4/ip_local_port_range"]) == host_net


def test_hugepages_2m_global_then_node0(tmp_path: Path) -> None:
    files = [HP2M / "nr_hugepages", NODE0_2M]
    before = snapshot(files)
    start = int((HP2M / "nr_hugepages").read_text())
    state = tmp_path / "state"
    try:
        policy = write_policy(tmp_path, f"name: k-hp\nhugepages:\n  - {{size: 2M, count: {start + 4}}}\n")
        r = hosttune(state, "apply", str(policy))
        assert r.returncode == 0, r.stderr
        assert int((HP2M / "nr_hugepages").read_text()) == start + 4
        assert int((HP2M / "free_hugepages").read_text()) >= 4
        node = write_policy(tmp_path, f"name: k-hp-node\nhugepages:\n  - {{size: 2M, count: {start + 6}, node: 0}}\n")
        r = hosttune(state, "apply", str(node))
        assert r.returncode == 0, r.stderr
        assert int(NODE0_2M.read_text()) == start + 6
        assert hosttune(state, "verify").returncode == 0
        r = hosttune(state, "revert")
        assert r.returncode == 0, r.stderr
        assert snapshot(files) == before
    finally:
        restore(before)


def test_hugepages_never_shrink_below_pages_in_use(tmp_path: Path) -> None:
    before = snapshot([HP2M / "nr_hugepages"])
    start = int((HP2M / "nr_hugepages").read_text())
    free_start = int((HP2M / "free_hugepages").read_text())
    state = tmp_path / "state"
    try:
        grow = write_policy(tmp_path, f"name: k-grow\nhugepages:\n  - {{size: 2M, count: {start + 4}}}\n")
        assert hosttune(state, "apply", str(grow)).returncode == 0
        # hold 2 pages: map and touch them
        region = mmap.mmap(-1, 2 * 2 * 1024 * 1024, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_HUGETLB)
        try:
            region[0] = 1
            region[2 * 1024 * 1024] = 1
            in_use = start + 4 - int((HP2M / "free_hugepages").read_text())
            assert in_use >= 2
            shrink = write_policy(tmp_path, "name: k-shrink\nhugepages:\n  - {size: 2M, count: 0}\n")
            plan = json.loads(hosttune(state, "plan", str(shrink), "--json").stdout)
            (change,) = [c for c in plan["changes"] if c["tuner"] == "hugepages"]
            assert change["value"] == str(in_use) and "in use" in change["reason"]
            r = hosttune(state, "apply", str(shrink))
            assert r.returncode == 0, r.stderr
            assert int((HP2M / "nr_hugepages").read_text()) == in_use
        finally:
            region.close()
        assert int((HP2M / "free_hugepages").read_text()) >= free_start
        r = hosttune(state, "revert")
        assert r.returncode == 0, r.stderr
        assert snapshot([HP2M / "nr_hugepages"]) == before
    finally:
        restore(before)


def test_hugepages_1g_one_more_page_or_an_honest_short_count(tmp_path: Path) -> None:
    """One more 1G page: either the pool holds exactly that many afterwards, or apply fails naming the short
    count and rolls back. (Asking for far more would briefly take all free memory of a shared machine.)"""
    pool = SYS / "kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"
    if not pool.exists():
        pytest.skip("no 1G hugepage support")
    before = snapshot([pool])
    ask = int(pool.read_text()) + 1
    policy = write_policy(tmp_path, f"name: k-1g\nhugepages:\n  - {{size: 1G, count: {ask}}}\n")
    state = tmp_path / "state"
    try:
        r = hosttune(state, "apply", str(policy))
        if r.returncode == 0:
            assert int(pool.read_text()) == ask
            assert hosttune(state, "revert").returncode == 0
        else:
            assert r.returncode == 1
            assert f"short allocation: asked for {ask} pages of 1G, the kernel gave {ask - 1}" in r.stderr, r.stderr
        assert snapshot([pool]) == before
    finally:
        restore(before)


def test_thp_enabled_and_defrag(tmp_path: Path) -> None:
    files = [THP / "enabled", THP / "defrag"]
    before = snapshot(files)
    enabled, defrag = other_choice(THP / "enabled"), other_choice(THP / "defrag")
    policy = write_policy(tmp_path, f"name: k-thp\nthp: {{enabled: {enabled}, defrag: \"{defrag}\"}}\n")
    state = tmp_path / "state"
    try:
        r = hosttune(state, "apply", str(policy))
        assert r.returncode == 0, r.stderr
        assert f"[{enabled}]" in (THP / "enabled").read_text()
        assert f"[{defrag}]" in (THP / "defrag").read_text()
        assert hosttune(state, "verify").returncode == 0
        assert hosttune(state, "revert").returncode == 0
        assert snapshot(files) == before  # byte for byte, brackets included
    finally:
        restore(before)


def test_loop_device_queue_settings(tmp_path: Path) -> None:
    with fresh_loop_device() as loop:
        queue = SYS / "block" / loop / "queue"
        files = [queue / "scheduler", queue / "nr_requests", queue / "read_ahead_kb"]
        before = snapshot(files)
        scheduler = other_choice(queue / "scheduler")
        policy = write_policy(tmp_path, f"name: k-loop\nblock:\n  - match: {{name: {loop}}}\n"
                                        f"    scheduler: {scheduler}\n    nr_requests: 64\n    read_ahead_kb: 4096\n")
        state = tmp_path / "state"
        r = hosttune(state, "apply", str(policy), "--json")
        assert r.returncode == 0, r.stderr
        assert f"[{scheduler}]" in (queue / "scheduler").read_text()
        assert (queue / "nr_requests").read_text() == "64\n"
        assert (queue / "read_ahead_kb").read_text() == "4096\n"
        assert hosttune(state, "verify").returncode == 0
        assert hosttune(state, "apply", str(policy), "--json").stdout.count('"writes": 0') == 1
        assert hosttune(state, "revert").returncode == 0
        assert snapshot(files) == before


def test_scheduler_switch_side_effect_on_nr_requests_is_reverted(tmp_path: Path) -> None:
    """The kernel resets nr_requests when the scheduler changes; revert must bring back the non-default original."""
    with fresh_loop_device() as loop:
        queue = SYS / "block" / loop / "queue"
        (queue / "nr_requests").write_text("100")  # the device's "original", set by someone before hosttune
        files = [queue / "scheduler", queue / "nr_requests"]
        before = snapshot(files)
        assert before[str(queue / "nr_requests")] == b"100\n"
        scheduler = other_choice(queue / "scheduler", avoid={"none"}) if "[none]" in (
            queue / "scheduler").read_text() else "none"
        policy = write_policy(tmp_path, f"name: k-sched\nblock:\n  - match: {{name: {loop}}}\n"
                                        f"    scheduler: {scheduler}\n")
        state = tmp_path / "state"
        assert hosttune(state, "apply", str(policy)).returncode == 0
        assert (queue / "nr_requests").read_text() != "100\n"  # the kernel's reset, not ours
        r = hosttune(state, "revert")
        assert r.returncode == 0, r.stderr
        assert snapshot(files) == before


def test_scheduler_not_offered_is_bad_input(tmp_path: Path) -> None:
    with fresh_loop_device() as loop:
        queue = SYS / "block" / loop / "queue"
        before = snapshot([queue / "scheduler", PROC_SYS / "vm/swappiness"])
        policy = write_policy(tmp_path, f"name: k-nosched\nsysctl:\n  vm.swappiness: 2\nblock:\n"
                                        f"  - match: {{name: {loop}}}\n    scheduler: cfq\n")
        r = hosttune(tmp_path / "state", "apply", str(policy))
        assert r.returncode == 2
        assert r.stderr.startswith(f"hosttune: error: {policy}:6: block.0.scheduler: {loop} does not offer"), r.stderr
        assert snapshot([queue / "scheduler", PROC_SYS / "vm/swappiness"]) == before
