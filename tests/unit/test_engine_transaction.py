"""The engine on fixture trees: plan writes nothing, apply+revert is byte-exact, a second apply writes nothing,
failures roll back, interrupted transactions are recovered, policy switches restore what the new policy drops."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.errors import HostError
from agent.hostfs import HostPaths
from agent.inspect.models import Conflict, HostFacts
from agent.policy.model import Policy
from agent.tuners import registry
from agent.tuning import api
from agent.tuning.journal import Journal
from agent.tuning.state import StateDir
from agent.tuning.writer import HostWriter
from tests.support.trees import tree_state

FULL: dict[str, Any] = {
    "name": "full",
    "sysctl": {"vm.swappiness": 1, "vm.max_map_count": ">=1048576", "net.core.somaxconn": ">=1024",
               "net.ipv4.ip_local_port_range": "1024 65000"},
    "hugepages": [{"size": "2M", "count": 16}, {"size": "1G", "count": 2}],
    "thp": {"enabled": "never", "defrag": "defer+madvise"},
    "cpu": {"governor": "performance", "energy_performance_preference": "performance"},
    "block": [{"match": {"name": "nvme*"}, "read_ahead_kb": 4096, "scheduler": "none", "nr_requests": 64,
               "udev_rule": True},
              {"match": {"rotational": True}, "scheduler": "bfq"}],
    "kernel_cmdline": {"isolcpus": "2-3"},
}


def root_of(paths: HostPaths) -> Path:
    return paths.procfs.parent


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """Make a file refuse writes even from root (ext4 immutable flag): a real EPERM from the filesystem."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True, timeout=10).returncode != 0:
        pytest.skip("chattr +i not supported here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True, timeout=10, check=True)


@pytest.mark.host("server")
def test_plan_writes_nothing(host: HostPaths, state_dir: Path) -> None:
    before = tree_state(root_of(host))
    plan = api.plan_policy(Policy.model_validate(FULL), host, state=StateDir(state_dir))
    assert tree_state(root_of(host)) == before
    assert not state_dir.exists()
    counts = plan.counts()
    assert counts["change"] == 21 and counts["ok"] == 1


@pytest.mark.host("server")
def test_apply_then_revert_is_byte_exact(host: HostPaths, state_dir: Path) -> None:
    root = root_of(host)
    before = tree_state(root)
    result = api.apply_policy(Policy.model_validate(FULL), host, StateDir(state_dir))
    after = tree_state(root)
    # what a kernel would show after these writes (formats written out by hand, not by the code under test)
    assert after["proc/sys/vm/swappiness"] == b"1\n"
    assert after["proc/sys/vm/max_map_count"] == b"1048576\n"
    assert after["proc/sys/net/ipv4/ip_local_port_range"] == b"1024\t65000\n"
    assert after["sys/kernel/mm/transparent_hugepage/enabled"] == b"always madvise [never]\n"
    assert after["sys/kernel/mm/transparent_hugepage/defrag"] == b"always defer [defer+madvise] madvise never\n"
    assert after["sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"] == b"2\n"
    assert after["sys/devices/system/cpu/cpufreq/policy3/scaling_governor"] == b"performance\n"
    nvme = "sys/devices/pci0000:00/0000:00:02.0/nvme/nvme0/nvme0n1/queue/"
    assert after[nvme + "scheduler"] == b"[none] mq-deadline kyber bfq \n"
    assert after[nvme + "nr_requests"] == b"64\n"
    assert b'KERNEL=="nvme*"' in after["rootfs/etc/udev/rules.d/60-hosttune-block-0.rules"]
    assert after["proc/cmdline"] == before["proc/cmdline"]  # advice only
    assert result.writes == 20
    changed = {k for k in after if after[k] != before.get(k)}
    assert len(changed) == 20  # 21 changes minus the cmdline advice

    reverted = api.revert(StateDir(state_dir))
    assert reverted.ok and reverted.writes == 20
    assert tree_state(root) == before
    assert api.status(StateDir(state_dir)).applied is None


@pytest.mark.host("server")
def test_second_apply_writes_nothing_and_revert_is_idempotent(host: HostPaths, state_dir: Path) -> None:
    policy = Policy.model_validate(FULL)
    api.apply_policy(policy, host, StateDir(state_dir))
    snapshot = tree_state(root_of(host))
    again = api.apply_policy(policy, host, StateDir(state_dir))
    assert again.writes == 0
    assert {c.action for c in again.changes if not c.reboot_required} <= {"ok", "not_applicable"}
    assert tree_state(root_of(host)) == snapshot
    first = api.revert(StateDir(state_dir))
    second = api.revert(StateDir(state_dir))
    assert first.writes == 20 and second.writes == 0 and not second.restored


def test_first_original_is_kept_across_applies(host: HostPaths, state_dir: Path) -> None:
    api.apply_policy(Policy(name="a", sysctl={"vm.swappiness": 1}), host, StateDir(state_dir))
    api.apply_policy(Policy(name="b", sysctl={"vm.swappiness": 5}), host, StateDir(state_dir))
    assert host.sysctl("vm.swappiness").read_text() == "5\n"
    api.revert(StateDir(state_dir))
    assert host.sysctl("vm.swappiness").read_text() == "60\n"


@pytest.mark.host("server")
def test_switching_policy_restores_what_the_new_one_drops(host: HostPaths, state_dir: Path) -> None:
    before = tree_state(root_of(host))
    api.apply_policy(Policy.model_validate(FULL), host, StateDir(state_dir))
    plan = api.plan_policy(Policy(name="small", sysctl={"vm.swappiness": 5}), host, state=StateDir(state_dir))
    stale = [c for c in plan.changes if c.stale]
    assert {c.target for c in stale} >= {"thp.enabled", "udev/60-hosttune-block-0.rules", "vm.max_map_count"}
    assert all("restore the original" in c.reason for c in stale)
    api.apply_policy(Policy(name="small", sysctl={"vm.swappiness": 5}), host, StateDir(state_dir))
    now = tree_state(root_of(host))
    assert now["proc/sys/vm/swappiness"] == b"5\n"
    assert {k for k in now if now[k] != before.get(k)} | {k for k in before if k not in now} == {
        "proc/sys/vm/swappiness"}
    assert [r.target for r in Journal(state_dir / "journal.json").data.originals] == ["vm.swappiness"]
    api.revert(StateDir(state_dir))
    assert tree_state(root_of(host)) == before


@pytest.mark.process
def test_failing_write_rolls_back_everything_and_names_it(host: HostPaths, state_dir: Path) -> None:
    root = root_of(host)
    before = tree_state(root)
    target = host.sys("block/nvme0n1/queue/read_ahead_kb")
    with immutable(target), pytest.raises(HostError) as e:
        api.apply_policy(Policy.model_validate(FULL), host, StateDir(state_dir))
    assert "block/nvme0n1/read_ahead_kb" in str(e.value) and "rolled back" in str(e.value)
    assert e.value.field == "block.0.read_ahead_kb"
    assert tree_state(root) == before
    journal = Journal(state_dir / "journal.json")
    assert journal.data.txn is not None and journal.data.txn.status == "rolled_back"
    assert journal.data.originals == [] and journal.data.applied is None


@pytest.mark.process
def test_failure_in_a_later_apply_returns_to_the_earlier_policy(host: HostPaths, state_dir: Path) -> None:
    api.apply_policy(Policy(name="a", sysctl={"vm.swappiness": 1}, thp={"enabled": "never"}), host,
                     StateDir(state_dir))
    applied_a = tree_state(root_of(host))
    with immutable(host.sys("kernel/mm/transparent_hugepage/defrag")), pytest.raises(HostError):
        api.apply_policy(Policy(name="b", sysctl={"vm.swappiness": 7, "vm.dirty_ratio": 5},
                                thp={"enabled": "always", "defrag": "never"}), host, StateDir(state_dir))
    assert tree_state(root_of(host)) == applied_a
    assert api.status(StateDir(state_dir)).applied.policy == "a"  # type: ignore[union-attr]


def test_target_vanishing_mid_apply_rolls_back(host: HostPaths, state_dir: Path) -> None:
    """A sysfs attribute can disappear between plan and write (hot-unplug): the write fails, nothing stays."""
    root = root_of(host)
    before = tree_state(root)
    policy = Policy.model_validate(FULL)
    plan = api.plan_policy(policy, host)
    victim = Path(next(c.path for c in plan.changes if c.target == "thp.defrag"))  # type: ignore[arg-type]
    saved = victim.read_bytes()
    victim.unlink()
    victim.mkdir()
    try:
        with StateDir(state_dir).locked() as journal, pytest.raises(HostError, match=r"thp\.defrag"):
            from agent.tuning.transaction import apply_plan
            apply_plan(plan, journal, HostWriter(journal))
    finally:
        victim.rmdir()
        victim.write_bytes(saved)
    assert tree_state(root) == before


def _die_mid_apply(host: HostPaths, state_dir: Path, policy: Policy, after: int) -> None:
    """Do what a process killed after `after` writes leaves behind: an open txn and some written values."""
    with StateDir(state_dir).locked() as journal:
        plan = api.plan_policy(policy, host)
        journal.begin("apply", policy=policy.name)
        writer = HostWriter(journal)
        for change in plan.writes[:after]:
            registry.get(change.tuner).apply(change, writer)


def test_interrupted_apply_is_rolled_back_by_revert(host: HostPaths, state_dir: Path) -> None:
    before = tree_state(root_of(host))
    _die_mid_apply(host, state_dir, Policy.model_validate(FULL), after=5)
    assert tree_state(root_of(host)) != before
    assert api.status(StateDir(state_dir)).interrupted
    assert not api.verify(StateDir(state_dir)).ok
    result = api.revert(StateDir(state_dir))
    assert result.recovered is not None and "rolled back interrupted apply" in result.recovered
    assert tree_state(root_of(host)) == before
    assert not api.status(StateDir(state_dir)).interrupted


def test_interrupted_apply_is_rolled_back_before_the_next_apply(host: HostPaths, state_dir: Path) -> None:
    before = tree_state(root_of(host))
    _die_mid_apply(host, state_dir, Policy.model_validate(FULL), after=3)
    result = api.apply_policy(Policy(name="small", sysctl={"vm.dirty_ratio": 10}), host, StateDir(state_dir))
    assert result.recovered is not None
    now = tree_state(root_of(host))
    assert {k for k in now if now[k] != before[k]} == {"proc/sys/vm/dirty_ratio"}


def test_interrupted_revert_is_finished_by_the_next(host: HostPaths, state_dir: Path) -> None:
    before = tree_state(root_of(host))
    api.apply_policy(Policy.model_validate(FULL), host, StateDir(state_dir))
    with StateDir(state_dir).locked() as journal:  # a revert that died after three restores
        journal.begin("revert", policy="full")
        writer = HostWriter(journal)
        for record in list(reversed(journal.data.originals))[:3]:
            registry.get(record.tuner).restore(record, writer)
            journal.drop_original(record.key)
            journal.save()
    result = api.revert(StateDir(state_dir))
    assert result.resumed and result.ok
    assert tree_state(root_of(host)) == before


@pytest.mark.process
def test_revert_failure_keeps_the_record_for_a_retry(host: HostPaths, state_dir: Path) -> None:
    before = tree_state(root_of(host))
    api.apply_policy(Policy(name="a", sysctl={"vm.swappiness": 1, "vm.dirty_ratio": 5}), host, StateDir(state_dir))
    with immutable(host.sysctl("vm.swappiness")):
        result = api.revert(StateDir(state_dir))
    assert not result.ok and result.failed[0].startswith("sysctl:vm.swappiness")
    assert result.restored == ["sysctl:vm.dirty_ratio"]
    assert api.status(StateDir(state_dir)).originals == 1
    assert api.revert(StateDir(state_dir)).ok
    assert tree_state(root_of(host)) == before


def test_verify_reports_drift_and_respects_constraints(host: HostPaths, state_dir: Path) -> None:
    api.apply_policy(Policy.model_validate(FULL), host, StateDir(state_dir))
    assert api.verify(StateDir(state_dir)).ok
    host.sysctl("vm.max_map_count").write_text("2000000\n")  # raised above the floor: still held
    assert api.verify(StateDir(state_dir)).ok
    host.sysctl("vm.swappiness").write_text("30\n")
    host.sys("kernel/mm/transparent_hugepage/enabled").write_text("[always] madvise never\n")
    result = api.verify(StateDir(state_dir))
    assert not result.ok
    assert {(i.target, i.expected, i.current) for i in result.drift} == {
        ("vm.swappiness", "1", "30"), ("thp.enabled", "never", "always")}
    pending = [i for i in result.items if i.state == "pending_reboot"]
    assert [i.target for i in pending] == ["cmdline/isolcpus"]


def test_conflicting_daemon_warns_on_its_domain(host: HostPaths) -> None:
    facts = HostFacts.model_construct(block_devices=[], conflicts=[
        Conflict(name="tuned", pid=321, manages=["sysctl", "cpu"]),
        Conflict(name="irqbalance", manages=["irq"])])
    plan = api.plan_policy(Policy.model_validate(FULL), host, facts=facts)
    warned = {c.tuner for c in plan.changes if c.warnings}
    assert warned == {"sysctl", "cpu"}
    sysctl = next(c for c in plan.changes if c.tuner == "sysctl")
    assert sysctl.warnings == ["tuned (pid 321) also manages sysctl: it may undo or fight this setting"]


def test_state_lock_refuses_a_second_writer(host: HostPaths, state_dir: Path) -> None:
    state = StateDir(state_dir)
    with state.locked(), pytest.raises(HostError, match="lock"):
        api.apply_policy(Policy(name="a", sysctl={"vm.swappiness": 1}), host, state)
    assert host.sysctl("vm.swappiness").read_text() == "60\n"
    assert (state_dir.stat().st_mode & 0o777) == 0o700


@pytest.mark.host("server")
def test_restore_removes_created_rule_file_even_if_dir_copy_differs(host: HostPaths, state_dir: Path) -> None:
    spec = {"name": "u", "block": [{"match": {"name": "sda"}, "read_ahead_kb": 512, "udev_rule": True}]}
    api.apply_policy(Policy.model_validate(spec), host, StateDir(state_dir))
    rule = host.root("etc/udev/rules.d/60-hosttune-block-0.rules")
    assert rule.is_file()
    rule.write_text(rule.read_text() + "# edited by someone\n")
    assert [i.current for i in api.verify(StateDir(state_dir)).drift] == ["(file, edited)"]
    api.revert(StateDir(state_dir))
    assert not rule.exists()
    shutil.rmtree(state_dir)
