"""The real kernel's THP file through an OS trial: opened the way the daemon's controller does it, the process
killed with SIGKILL, then a real `hosttune daemon` started on the live host: THP is back to what it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.bench.llama_local import free_port
from agent.tuning.state import StateDir
from agent.tuning.trial import open_trial
from tests.kernel.tuning_support import SYS, kernel_tier_lock
from tests.support.daemon_fixtures import DaemonProcess, no_gpu_sim, write_config
from tests.support.os_trial_holder import trial_held_open

pytestmark = [pytest.mark.kernel, pytest.mark.root, pytest.mark.slow]
THP = SYS / "kernel/mm/transparent_hugepage/enabled"


def active(path: Path) -> str:
    text = path.read_text()
    return text[text.index("[") + 1:text.index("]")]


def test_kill_9_during_a_thp_trial_then_the_daemon_start_puts_thp_back(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (writes the real THP file)")
    if not THP.exists():
        pytest.skip("no transparent hugepages on this kernel")
    with kernel_tier_lock():
        original = THP.read_bytes()
        was = active(THP)
        config = write_config(tmp_path / "daemon.yaml", state_dir=str(tmp_path / "state"),
                              nvml_sim=str(no_gpu_sim(tmp_path)), drift_check_s=0, telemetry_interval_s=1,
                              api={"port": free_port()}, gateway={"port": free_port()})
        try:
            with trial_held_open(config, "thp"):
                assert active(THP) != was
                assert open_trial(StateDir(tmp_path / "state").journal()) == "thp"
            assert active(THP) != was   # nothing but the next start puts it back
            daemon = DaemonProcess(config, tmp_path)
            try:
                daemon.wait_ready()
                assert any(s.startswith("rolled back interrupted apply of trial:thp")
                           for s in daemon.notify.statuses()), daemon.notify.statuses()
                assert THP.read_bytes() == original
                journal = StateDir(tmp_path / "state").journal()
                assert journal.open_txn is None and journal.data.originals == []
            finally:
                assert daemon.stop() == 0
        finally:
            if active(THP) != was:   # last resort: the session guard would flag it
                THP.write_text(was)
