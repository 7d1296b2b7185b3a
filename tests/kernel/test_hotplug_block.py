"""Block hot-plug on the real kernel: the daemon's uevent watch (pyudev, source "kernel") and its tuning path, with
a loop device created, attached (losetup, a sparse file), detached and removed while it runs.

The device is a brand-new one (LOOP_CTL_ADD under a number nobody uses, see tuning_support): a policy naming it
is applied first, so the tuning can only come from the hot-plug. Queue settings outlive a detach, so the device
is removed at the end (LOOP_CTL_REMOVE), which is also the "removed" case: its journal originals are dropped.
"""

from __future__ import annotations

import fcntl
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import DaemonSettings
from agent.daemon.hotplug_watch import BlockWatch, watch_block_devices
from agent.daemon.services import Services
from agent.tuning.journal import JournalData
from agent.tuning.state import StateDir
from tests.kernel.tuning_support import LOOP_CONTROL, LOOP_CTL_ADD, LOOP_CTL_REMOVE, SYS, kernel_tier_lock

pytestmark = [pytest.mark.kernel, pytest.mark.root]

WAIT_S = 5.0


@pytest.fixture(autouse=True)
def serialized() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices and block queue writes")
    with kernel_tier_lock():
        yield


def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        time.sleep(0.05)


def unused_loop_number() -> int:
    for _ in range(100):
        n = random.randint(300, 9999)
        if not (SYS / "block" / f"loop{n}").exists() and not Path(f"/dev/loop{n}").exists():
            return n
    raise RuntimeError("no unused loop device number")


def journal(state: Path) -> JournalData:
    return StateDir(state).journal().data


def test_attached_disk_gets_the_policy_and_a_removed_one_is_gone(tmp_path: Path) -> None:
    n = unused_loop_number()
    name = f"loop{n}"
    offered = (SYS / "block/loop0/queue/scheduler").read_text().replace("[", "").replace("]", "").split()
    scheduler = "mq-deadline" if "mq-deadline" in offered else offered[-1]
    read_ahead = 4096 + random.randint(1, 250) * 4
    policy = tmp_path / "hotplug.yaml"
    policy.write_text(f"name: k-hotplug\nblock:\n  - match: {{name: {name}}}\n"
                      f"    scheduler: {scheduler}\n    read_ahead_kb: {read_ahead}\n")
    nvml = tmp_path / "nvml-missing.json"
    nvml.write_text('{"library": "missing"}\n')
    state = tmp_path / "state"
    services = Services(DaemonSettings.model_validate({"state_dir": state, "nvml_sim": nvml, "drift_check_s": 0}))
    assert services.tuning.paths.is_live
    queue = SYS / "block" / name / "queue"
    keys = {f"blockdev:block/{name}/read_ahead_kb", f"blockdev:block/{name}/scheduler"}
    backing = tmp_path / "disk.img"
    with backing.open("wb") as f:
        f.truncate(64 << 20)  # sparse: no blocks written

    # The policy is applied before the disk exists: nothing of it matches yet.
    facts = services.tuning.host_facts()
    services.tuning.apply_loaded(services.tuning.load_policy_ref(str(policy), facts), facts)
    assert not keys & {r.key for r in journal(state).originals}

    watch: BlockWatch | None = watch_block_devices(services.tuning)
    assert watch is not None, "no kernel uevents on this host"
    control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    created = attached = False
    try:
        assert fcntl.ioctl(control, LOOP_CTL_ADD, n) == n
        created = True
        subprocess.run(["losetup", f"/dev/{name}", str(backing)], check=True, timeout=30)
        attached = True

        wait_for(f"{name} read_ahead_kb {read_ahead}",
                 lambda: (queue / "read_ahead_kb").read_text().strip() == str(read_ahead))
        wait_for(f"{name} scheduler {scheduler}", lambda: f"[{scheduler}]" in (queue / "scheduler").read_text())
        wait_for("the journal's originals", lambda: keys <= {r.key for r in journal(state).originals})

        def committed() -> bool:  # originals are journaled before the writes, the commit after them
            txn = journal(state).txn
            return txn is not None and txn.status == "committed" and {w.key for w in txn.writes} >= keys
        wait_for("the hot-plug transaction committed", committed)
        data = journal(state)
        assert data.txn is not None and data.txn.status == "committed"
        assert {w.key for w in data.txn.writes} >= keys
        assert data.applied is not None and data.applied.policy == "k-hotplug"
        tuned = {c.key: c for c in data.applied.changes}
        assert tuned[f"blockdev:block/{name}/read_ahead_kb"].value == str(read_ahead)
        assert services.verify()["ok"]

        # Detached: the loop device has no disk (its queue files stay): its entries are marked gone.
        subprocess.run(["losetup", "-d", f"/dev/{name}"], check=True, timeout=30)
        attached = False

        def marked_gone() -> bool:
            applied = journal(state).applied
            return applied is not None and all(
                c.action == "not_applicable" and c.reason.startswith("gone from this host")
                for c in applied.changes if c.key in keys)
        wait_for(f"{name} marked gone", marked_gone)
        assert keys <= {r.key for r in journal(state).originals}  # still restorable: the files are there
        assert services.verify()["ok"]  # gone is not drift

        # Removed: the targets vanished, so their originals are dropped (nothing left to restore).
        fcntl.ioctl(control, LOOP_CTL_REMOVE, n)
        created = False
        wait_for(f"{name} originals dropped", lambda: not keys & {r.key for r in journal(state).originals})
    finally:
        watch.stop()
        if attached:
            subprocess.run(["losetup", "-d", f"/dev/{name}"], check=False, timeout=30)
        if created:
            fcntl.ioctl(control, LOOP_CTL_REMOVE, n)
        os.close(control)
        services.revert()
