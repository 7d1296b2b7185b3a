"""The tuning engine's hot-plug entry points on a fixture tree: a disk that appears gets the applied policy's block
settings in one journaled transaction (nothing else re-planned), a disk that goes is marked gone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.hostfs import HostPaths
from agent.policy.model import Policy
from agent.tuning import api
from agent.tuning.hotplug import mark_gone, plan_disk, tune_disk
from agent.tuning.state import StateDir

pytestmark = pytest.mark.host("server")  # its NVMe disks offer kyber

SOURCE = "/policies/hotplug.yaml"
POLICY = Policy.model_validate({"name": "hotplug", "sysctl": {"vm.swappiness": 7},
                                "block": [{"match": {"name": "nvme*"}, "read_ahead_kb": 4096,
                                           "scheduler": "kyber"}]})
NEW_KEYS = {"blockdev:block/nvme1n1/read_ahead_kb", "blockdev:block/nvme1n1/scheduler"}


def attach_nvme(paths: HostPaths, name: str = "nvme1n1") -> Path:
    """A second NVMe namespace appearing in the fixture tree, as the kernel would add it under /sys."""
    devpath = f"devices/pci0000:00/0000:00:03.0/nvme/nvme1/{name}"
    queue = paths.sys(devpath, "queue")
    queue.mkdir(parents=True)
    (queue / "scheduler").write_text("none [mq-deadline] kyber bfq \n")
    (queue / "read_ahead_kb").write_text("128\n")
    (queue / "nr_requests").write_text("256\n")
    (queue / "rotational").write_text("0\n")
    paths.sys("block", name).symlink_to("../" + devpath)
    return queue


def detach(paths: HostPaths, name: str = "nvme1n1") -> None:
    link = paths.sys("block", name)
    shutil.rmtree(link.resolve())
    link.unlink()


@pytest.fixture
def state(host: HostPaths, state_dir: Path) -> StateDir:
    st = StateDir(state_dir)
    api.apply_policy(POLICY, host, st, source=SOURCE)
    return st


def originals(state: StateDir) -> set[str]:
    return {r.key for r in state.journal().data.originals}


def test_plan_disk_is_only_that_disk(host: HostPaths) -> None:
    attach_nvme(host)
    plan = plan_disk(POLICY, None, host, "nvme1n1", source=SOURCE)
    assert {c.target for c in plan.changes} == {"block/nvme1n1/scheduler", "block/nvme1n1/read_ahead_kb"}
    assert plan_disk(POLICY, None, host, "sda").changes == []


def test_new_disk_tuned_in_one_transaction_without_reapplying_the_rest(host: HostPaths, state: StateDir) -> None:
    swappiness = host.proc("sys/vm/swappiness")
    swappiness.write_text("60\n")  # drift elsewhere: the daemon's drift settings decide about it, not hot-plug
    queue = attach_nvme(host)
    history = len(state.journal().data.history)

    result = tune_disk(POLICY, host, state, "nvme1n1", facts=None, source=SOURCE)

    assert result is not None and result.writes >= 2
    assert (queue / "read_ahead_kb").read_text().strip() == "4096"
    assert "[kyber]" in (queue / "scheduler").read_text()
    assert swappiness.read_text() == "60\n"
    data = state.journal().data
    assert originals(state) >= NEW_KEYS
    assert data.txn is not None and data.txn.status == "committed" and len(data.history) == history + 1
    assert data.applied is not None and data.applied.source == SOURCE and data.applied.txn == data.txn.id
    targets = [c.target for c in data.applied.changes]
    assert "vm.swappiness" in targets and "block/nvme0n1/read_ahead_kb" in targets
    assert "block/nvme1n1/read_ahead_kb" in targets
    assert [i.target for i in api.verify(state).drift] == ["vm.swappiness"]

    # revert restores the hot-plugged disk byte for byte too
    api.revert(state)
    assert (queue / "read_ahead_kb").read_text() == "128\n"
    assert "[mq-deadline]" in (queue / "scheduler").read_text()


def test_disk_already_holding_the_policy_opens_no_transaction(host: HostPaths, state: StateDir) -> None:
    before = state.journal().data
    assert tune_disk(POLICY, host, state, "nvme0n1", facts=None, source=SOURCE) is None
    assert state.journal().data == before


def test_other_policy_applied_since_is_left_alone(host: HostPaths, state: StateDir) -> None:
    queue = attach_nvme(host)
    assert tune_disk(POLICY, host, state, "nvme1n1", facts=None, source="/elsewhere.yaml") is None
    assert (queue / "read_ahead_kb").read_text() == "128\n"
    assert mark_gone(state, "nvme0n1", source="/elsewhere.yaml") == []


def test_removed_disk_is_gone_from_the_journal(host: HostPaths, state: StateDir) -> None:
    attach_nvme(host)
    tune_disk(POLICY, host, state, "nvme1n1", facts=None, source=SOURCE)
    detach(host)

    marked = mark_gone(state, "nvme1n1", source=SOURCE)

    assert set(marked) >= NEW_KEYS
    assert not NEW_KEYS & originals(state)  # the files vanished: nothing to restore (ownership.forget_gone)
    applied = state.journal().data.applied
    assert applied is not None
    gone = [c for c in applied.changes if c.target.startswith("block/nvme1n1/")]
    assert gone and all(c.action == "not_applicable" and c.reason.startswith("gone from this host") for c in gone)
    assert api.verify(state).ok
    assert mark_gone(state, "nvme1n1", source=SOURCE) == []  # once


def test_detached_but_still_listed_keeps_its_originals_and_comes_back(host: HostPaths, state: StateDir) -> None:
    queue = attach_nvme(host)
    tune_disk(POLICY, host, state, "nvme1n1", facts=None, source=SOURCE)
    mark_gone(state, "nvme1n1", source=SOURCE)  # e.g. a detached loop device: its queue files stay
    assert originals(state) >= NEW_KEYS

    # attached again with the values still set: nothing to write, its entries are the policy's again
    assert tune_disk(POLICY, host, state, "nvme1n1", facts=None, source=SOURCE) is None
    applied = state.journal().data.applied
    assert applied is not None
    assert {c.action for c in applied.changes if c.target.startswith("block/nvme1n1/")} == {"ok"}
    api.revert(state)
    assert (queue / "read_ahead_kb").read_text() == "128\n"
