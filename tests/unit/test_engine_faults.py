"""The engine under faults on fixture trees: a journaled target that vanished (a block device renamed across a
reboot) is dropped, not a failure forever; a value someone else changed since hosttune set it is left alone by
revert and by a policy switch (unless forced), over the CLI (tests/process/test_engine_cli.py) and the API (here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.hostfs import HostPaths
from agent.policy.model import Policy
from agent.tuners import registry
from agent.tuning import api
from agent.tuning.state import StateDir
from agent.tuning.writer import HostWriter
from tests.support.daemon_fixtures import MainThreadClient, main_thread_client, settings_for
from tests.support.trees import tree_state

NVME = "devices/pci0000:00/0000:00:02.0/nvme/nvme0/nvme0n1"
WITH_NVME = {"name": "with-nvme", "sysctl": {"vm.swappiness": 1},
             "block": [{"match": {"name": "nvme*"}, "read_ahead_kb": 4096, "scheduler": "none"}]}


def root_of(paths: HostPaths) -> Path:
    return paths.procfs.parent


def rename_nvme(host: HostPaths) -> None:
    """What a reboot that enumerates the disk as nvme1n1 leaves: nothing named nvme0n1 any more."""
    sysfs = host.sysfs
    old = sysfs / NVME
    old.rename(old.with_name("nvme1n1"))
    (sysfs / "block/nvme0n1").unlink()
    (sysfs / "block/nvme1n1").symlink_to("../" + NVME.replace("nvme0n1", "nvme1n1"))


def nvme_keys(state_dir: Path) -> list[str]:
    return [r.key for r in StateDir(state_dir).journal().data.originals if "nvme0n1" in r.key]


@pytest.mark.host("server")
def test_revert_drops_a_vanished_target_and_restores_the_rest(host: HostPaths, state_dir: Path) -> None:
    api.apply_policy(Policy.model_validate(WITH_NVME), host, StateDir(state_dir))
    assert nvme_keys(state_dir)
    rename_nvme(host)
    before_revert = tree_state(root_of(host))
    result = api.revert(StateDir(state_dir))
    assert result.ok and not result.failed
    assert sorted(result.gone) == sorted(k for k in result.gone if "nvme0n1" in k) and result.gone
    assert result.restored == ["sysctl:vm.swappiness"]
    assert host.sysctl("vm.swappiness").read_text() == "60\n"
    status = api.status(StateDir(state_dir))
    assert status.originals == 0 and status.applied is None
    now = tree_state(root_of(host))
    assert {k for k in now if now[k] != before_revert.get(k)} == {"proc/sys/vm/swappiness"}


@pytest.mark.host("server")
def test_a_vanished_target_does_not_block_the_next_apply(host: HostPaths, state_dir: Path) -> None:
    api.apply_policy(Policy.model_validate(WITH_NVME), host, StateDir(state_dir))
    rename_nvme(host)
    other = Policy(name="other", sysctl={"vm.swappiness": 5})
    plan = api.plan_policy(other, host, state=StateDir(state_dir))
    gone = [c for c in plan.changes if c.stale and "nvme0n1" in c.target]
    assert gone and all(c.action == "not_applicable" and "gone from this host" in c.reason for c in gone)
    result = api.apply_policy(other, host, StateDir(state_dir))
    assert result.writes == 1 and host.sysctl("vm.swappiness").read_text() == "5\n"
    assert nvme_keys(state_dir) == []
    assert api.revert(StateDir(state_dir)).ok


@pytest.mark.host("server")
def test_a_vanished_target_in_an_interrupted_apply_does_not_block_recovery(host: HostPaths,
                                                                           state_dir: Path) -> None:
    """The daemon's start runs this recovery: before, it raised "could not roll back" at every start."""
    policy = Policy.model_validate(WITH_NVME)
    with StateDir(state_dir).locked() as journal:  # a process that died after all its writes, before commit
        plan = api.plan_policy(policy, host)
        journal.begin("apply", policy=policy.name)
        writer = HostWriter(journal)
        for change in plan.writes:
            registry.get(change.tuner).apply(change, writer)
    rename_nvme(host)
    note = api.recover_only(StateDir(state_dir))
    assert note is not None and note.startswith("rolled back interrupted apply of with-nvme")
    assert host.sysctl("vm.swappiness").read_text() == "60\n"
    assert nvme_keys(state_dir) == [] and api.status(StateDir(state_dir)).originals == 0


def test_revert_skips_a_value_changed_since_and_force_restores_it(host: HostPaths, state_dir: Path) -> None:
    before = tree_state(root_of(host))
    policy = Policy(name="a", sysctl={"vm.swappiness": 1, "vm.dirty_ratio": 5})
    api.apply_policy(policy, host, StateDir(state_dir))
    host.sysctl("vm.swappiness").write_text("30\n")  # an admin, after hosttune
    result = api.revert(StateDir(state_dir))
    assert not result.ok and not result.failed
    assert [d.model_dump() for d in result.skipped] == [
        {"key": "sysctl:vm.swappiness", "current": "30", "expected": "1", "original": "60"}]
    assert result.restored == ["sysctl:vm.dirty_ratio"]
    assert host.sysctl("vm.swappiness").read_text() == "30\n"
    assert api.status(StateDir(state_dir)).originals == 1  # kept for --force
    forced = api.revert(StateDir(state_dir), force=True)
    assert forced.ok and forced.restored == ["sysctl:vm.swappiness"]
    assert tree_state(root_of(host)) == before


def test_a_value_hosttune_set_again_is_its_own_again(host: HostPaths, state_dir: Path) -> None:
    """Drift that a later apply (the daemon's re-apply on drift) corrected is not someone else's any more."""
    before = tree_state(root_of(host))
    policy = Policy(name="a", sysctl={"vm.swappiness": 1})
    api.apply_policy(policy, host, StateDir(state_dir))
    host.sysctl("vm.swappiness").write_text("30\n")
    assert api.apply_policy(policy, host, StateDir(state_dir)).writes == 1
    assert api.revert(StateDir(state_dir)).ok
    assert tree_state(root_of(host)) == before


def test_policy_switch_leaves_a_dropped_target_someone_changed(host: HostPaths, state_dir: Path) -> None:
    api.apply_policy(Policy(name="a", sysctl={"vm.swappiness": 1, "vm.dirty_ratio": 5}), host, StateDir(state_dir))
    host.sysctl("vm.swappiness").write_text("30\n")
    b = Policy(name="b", sysctl={"vm.dirty_ratio": 5})
    stale = next(c for c in api.plan_policy(b, host, state=StateDir(state_dir)).changes if c.stale)
    assert stale.target == "vm.swappiness" and stale.action == "ok"
    assert stale.warnings == ["now '30', hosttune had set '1'; `hosttune revert --force` restores the original '60'"]
    assert api.apply_policy(b, host, StateDir(state_dir)).writes == 0
    assert host.sysctl("vm.swappiness").read_text() == "30\n"
    assert api.status(StateDir(state_dir)).originals == 2


# -- the API: POST /v1/revert reports skips with 409 and takes {"force": true} ----------------------------------
@pytest.fixture
def client(host: HostPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MainThreadClient]:
    for name in list(os.environ):
        if name.startswith("HOSTTUNE_"):
            monkeypatch.delenv(name)
    with main_thread_client(settings_for(host, tmp_path)) as c:
        yield c


def test_api_revert_answers_409_with_the_skipped_and_force_restores(client: MainThreadClient,
                                                                    host: HostPaths) -> None:
    before = tree_state(root_of(host))
    applied = client.post("/v1/apply", json={"policy": {"name": "a", "sysctl": {"vm.swappiness": 1}}})
    assert applied.status_code == 200, applied.text
    host.sysctl("vm.swappiness").write_text("30\n")
    for bad in ({"force": "yes"}, {"force": True, "extra": 1}):
        assert client.post("/v1/revert", json=bad).status_code == 422
    skipped = client.post("/v1/revert")
    assert skipped.status_code == 409, skipped.text
    body = skipped.json()
    assert body["ok"] is False and body["error"] == "conflict" and "force" in body["detail"]
    assert body["skipped"] == [{"key": "sysctl:vm.swappiness", "current": "30", "expected": "1", "original": "60"}]
    assert host.sysctl("vm.swappiness").read_text() == "30\n"
    forced = client.post("/v1/revert", json={"force": True})
    assert forced.status_code == 200 and forced.json()["restored"] == ["sysctl:vm.swappiness"]
    assert tree_state(root_of(host)) == before


def test_values_left_by_a_failed_rollback_are_not_someone_elses(host: HostPaths, state_dir: Path) -> None:
    """An apply whose rollback failed left hosttune's own values behind: revert restores them, no skip."""
    before = tree_state(root_of(host))
    api.apply_policy(Policy(name="a", sysctl={"vm.swappiness": 1}), host, StateDir(state_dir))
    with StateDir(state_dir).locked() as journal:  # apply b wrote, its rollback could not restore: "failed"
        plan = api.plan_policy(Policy(name="b", sysctl={"vm.swappiness": 9}), host)
        journal.begin("apply", policy="b")
        writer = HostWriter(journal)
        for change in plan.writes:
            registry.get(change.tuner).apply(change, writer)
        journal.finish("failed", error="rollback incomplete")
    result = api.revert(StateDir(state_dir))
    assert result.ok and result.skipped == []
    assert tree_state(root_of(host)) == before


@pytest.mark.process
def test_sigterm_during_a_cli_apply_rolls_back_completely(host: HostPaths, state_dir: Path, tmp_path: Path) -> None:
    """`hosttune apply` killed politely twice — once mid-apply, once mid-rollback — still rolls back everything
    (before: the second SIGTERM aborted the rollback, leaving a failed transaction)."""
    before = tree_state(root_of(host))
    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\nsysctl:\n  vm.swappiness: 1\n  vm.dirty_ratio: 5\n  vm.max_map_count: 262144\n")
    stall = tmp_path / "stall"
    stall.mkdir()
    env = {**os.environ, "HOSTTUNE_TEST_STALL_AT_WRITES": "2,3", "HOSTTUNE_TEST_STALL_DIR": str(stall)}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "apply", str(policy), "--procfs", str(host.procfs),
                             "--sysfs", str(host.sysfs), "--rootfs", str(host.rootfs), "--state-dir", str(state_dir)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for n in (2, 3):  # after the 2nd write of the apply, then at the rollback's first restore
            deadline = time.monotonic() + 60
            while not (stall / f"stalled-{n}").exists():
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            (stall / f"release-{n}").touch()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()  # our own child, by PID
            proc.wait(10)
    assert proc.returncode == 1 and "interrupted by signal 15" in err and "rolled back 2 writes" in err, err
    assert tree_state(root_of(host)) == before
    journal = StateDir(state_dir).journal().data
    assert journal.txn is not None and journal.txn.status == "rolled_back" and journal.originals == []
