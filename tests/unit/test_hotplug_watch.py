"""The daemon's block hot-plug watch without the kernel: which uevents count, the debounce, retries and failures,
and what the daemon does for a settled disk (through Services on a fixture tree)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from agent.daemon.hotplug_watch import BlockWatch, Debouncer, DiskFollower, disk_event, watch_block_devices
from agent.errors import HostError
from agent.hostfs import HostPaths
from agent.tuning.state import StateLocked
from tests.support.daemon_fixtures import services_for
from tests.unit.test_tuning_hotplug import attach_nvme, detach


@pytest.mark.parametrize(("action", "subsystem", "devtype", "name", "wanted"), [
    ("add", "block", "disk", "nvme1n1", "nvme1n1"),
    ("change", "block", "disk", "loop7", "loop7"),
    ("remove", "block", "disk", "sdb", "sdb"),
    ("add", "block", "partition", "nvme1n1p1", None),
    ("add", "net", None, "eth0", None),
    ("bind", "block", "disk", "sdb", None),
    (None, "block", "disk", "sdb", None),
    ("add", "block", "disk", "", None),
    ("add", "block", "disk", "..", None),  # never a path: /sys/block/.. is /sys
    ("add", "block", "disk", "a/b", None),
    ("add", "block", "disk", "x" * 65, None),
])
def test_only_block_whole_disk_events_count(action: str | None, subsystem: str, devtype: str | None, name: str,
                                            wanted: str | None) -> None:
    assert disk_event(action, subsystem, devtype, name) == wanted


def test_debounce_waits_for_quiet_and_fires_once_per_burst() -> None:
    d = Debouncer(quiet_s=0.2)
    d.note("loop7", now=10.0)
    d.note("loop7", now=10.1)  # a second event pushes the deadline back
    d.note("nvme1n1", now=10.15)
    assert d.next_due() == pytest.approx(10.3)
    assert d.pop_due(10.25) == []
    assert d.pop_due(10.31) == ["loop7"]
    assert d.pop_due(10.31) == []
    assert d.pop_due(10.4) == ["nvme1n1"]
    assert d.next_due() is None


def test_explicit_delay_for_a_retry() -> None:
    d = Debouncer(quiet_s=0.2)
    d.note("sdb", now=5.0, delay=1.0)
    assert d.pop_due(5.5) == [] and d.pop_due(6.0) == ["sdb"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_state_lock_held_is_retried_then_given_up(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def locked(name: str) -> None:
        calls.append(name)
        raise StateLocked("another hosttune process holds the state lock")

    clock = Clock()
    watch = BlockWatch(locked, clock=clock)
    for _ in range(20):
        watch.act("sdb")
        due = watch.debouncer.next_due()
        if due is None:
            break
        assert due > clock.now  # re-queued for later, not spun on
        clock.now = due
        assert watch.debouncer.pop_due(clock.now) == ["sdb"]
    assert 1 < len(calls) < 20
    assert "sdb not handled" in caplog.text


def test_a_failure_is_logged_and_the_watch_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    def broken(name: str) -> None:
        if name == "sdb":
            raise RuntimeError("boom")
        raise HostError("apply failed at blockdev block/sdc/scheduler: refused")

    watch = BlockWatch(broken)
    with caplog.at_level(logging.WARNING):
        watch.act("sdb")
        watch.act("sdc")
    assert "sdb failed" in caplog.text and "boom" in caplog.text
    assert "sdc: apply failed" in caplog.text
    assert watch.debouncer.next_due() is None


def test_the_thread_acts_once_per_burst_and_stops() -> None:
    seen: list[str] = []
    done = threading.Event()

    def handle(name: str) -> None:
        seen.append(name)
        done.set()

    watch = BlockWatch(handle, quiet_s=0.05)
    thread = threading.Thread(target=watch.run)
    thread.start()
    try:
        for _ in range(5):
            watch.notice("loop7")
        assert done.wait(10)
    finally:
        watch.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert seen == ["loop7"]


def test_fixture_trees_are_not_watched(host: HostPaths, tmp_path: Path) -> None:
    assert watch_block_devices(services_for(host, tmp_path).tuning) is None


@pytest.mark.host("server")
def test_a_policy_without_block_settings_takes_no_lock_for_a_new_disk(host: HostPaths, tmp_path: Path) -> None:
    policy = tmp_path / "noblock.yaml"
    policy.write_text("name: noblock\nsysctl:\n  vm.swappiness: 10\n")
    services = services_for(host, tmp_path)
    services.tuning.apply_loaded(services.tuning.load_policy_ref(str(policy)))
    generation = services.events.generation
    queue = attach_nvme(host)
    mutations: list[object] = []

    def refuse(fn: object) -> None:
        mutations.append(fn)

    services.tuning.run_mutation = refuse
    DiskFollower(services.tuning)("nvme1n1")
    assert mutations == [] and services.events.generation == generation
    assert (queue / "read_ahead_kb").read_text() == "128\n"


@pytest.mark.host("server")
def test_the_daemon_tunes_a_new_disk_and_marks_it_gone(host: HostPaths, tmp_path: Path) -> None:
    policy = tmp_path / "hotplug.yaml"
    policy.write_text("name: hotplug\nblock:\n  - match: {name: 'nvme*'}\n    read_ahead_kb: 4096\n")
    services = services_for(host, tmp_path)
    follow = DiskFollower(services.tuning)
    queue = attach_nvme(host)
    follow("nvme1n1")  # no policy applied by this daemon yet: nothing to follow
    assert (queue / "read_ahead_kb").read_text() == "128\n"

    services.tuning.apply_loaded(services.tuning.load_policy_ref(str(policy)))
    detach(host)
    queue = attach_nvme(host)
    follow("nvme1n1")
    assert (queue / "read_ahead_kb").read_text().strip() == "4096"
    last = services.events.recent(1)[-1]
    assert last["kind"] == "hotplug" and last["device"] == "nvme1n1"

    detach(host)
    follow("nvme1n1")
    assert services.events.recent(1)[-1]["gone"] >= 1
    assert services.verify()["ok"]
