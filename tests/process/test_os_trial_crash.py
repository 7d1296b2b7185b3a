"""kill -9 while an OS trial is open: the journal stays consistent (one open apply named trial:<name>) and the
next daemon start rolls it back, leaving the host as the applied policy left it, byte for byte. On a copy of the
fixture server tree; the real kernel's THP file is tests/kernel/test_os_trial_real.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.bench.llama_local import free_port
from agent.hostfs import HostPaths
from agent.tuning.state import StateDir
from agent.tuning.trial import open_trial
from tests.support.daemon_fixtures import DaemonProcess, no_gpu_sim, write_config
from tests.support.os_trial_holder import trial_held_open
from tests.support.trees import tree_state

pytestmark = [pytest.mark.process, pytest.mark.slow]


def thp(host: HostPaths) -> str:
    return host.sys("kernel/mm/transparent_hugepage/enabled").read_text()


def test_kill_9_during_an_os_trial_then_the_next_start_restores_the_host(host: HostPaths, tmp_path: Path) -> None:
    root = host.procfs.parent
    policy = tmp_path / "policy.yaml"
    policy.write_text("name: trial-base\nsysctl:\n  vm.swappiness: 7\n")
    config = write_config(tmp_path / "daemon.yaml", state_dir=str(tmp_path / "state"), procfs=str(host.procfs),
                          sysfs=str(host.sysfs), rootfs=str(host.rootfs), nvml_sim=str(no_gpu_sim(tmp_path)),
                          drift_check_s=0, telemetry_interval_s=1, api={"port": free_port()},
                          gateway={"port": free_port()}, policy=str(policy))
    first = DaemonProcess(config, tmp_path)
    try:
        first.wait_ready()
    finally:
        assert first.stop() == 0
    tuned = tree_state(root)   # the policy applied (an installed daemon keeps it on stop)
    assert "[madvise]" in thp(host)

    with trial_held_open(config, "thp"):
        assert "[always]" in thp(host)
        journal = StateDir(tmp_path / "state").journal()
        assert open_trial(journal) == "thp" and journal.open_txn is not None
        assert [w.target for w in journal.open_txn.writes] == ["thp.enabled"]
    assert tree_state(root) != tuned

    (tmp_path / "second").mkdir()
    second = DaemonProcess(config, tmp_path / "second")   # its own notify socket and log
    try:
        second.wait_ready()
        assert any(s.startswith("rolled back interrupted apply of trial:thp") for s in second.notify.statuses()), \
            second.notify.statuses()
        assert "[madvise]" in thp(host)
        assert tree_state(root) == tuned
        journal = StateDir(tmp_path / "state").journal()
        assert journal.open_txn is None and open_trial(journal) is None
        assert [h.status for h in journal.data.history if h.policy == "trial:thp"] == ["rolled_back"]
        assert journal.data.applied is not None and journal.data.applied.policy == "trial-base"
    finally:
        assert second.stop() == 0
