"""The daemon under faults, as real processes on a fixture host tree: a second daemon on the same state dir,
SIGTERM during a host mutation, SIGHUP while an API apply is in progress.

Mutations are held at a chosen host write with HOSTTUNE_TEST_STALL_AT_WRITES (agent/engine/writer.py) so a signal
lands mid-transaction deterministically, not by sleeping and hoping."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import tree_state
from daemon_fixtures import HOSTTUNE, ROUND_TRIP_POLICY, DaemonProcess, free_port, no_gpu_sim, write_config

from agent.hostfs import HostPaths

pytestmark = pytest.mark.slow


def config(host: HostPaths, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"state_dir": str(tmp_path / "state"), "procfs": str(host.procfs), "sysfs": str(host.sysfs),
            "rootfs": str(host.rootfs), "nvml_sim": str(no_gpu_sim(tmp_path)), "drift_check_s": 0,
            "telemetry_interval_s": 1, **extra}


def test_second_daemon_refuses_before_touching_anything(host: HostPaths, tmp_path: Path) -> None:
    root = host.procfs.parent
    sock = tmp_path / "run/api.sock"
    first_policy = tmp_path / "first.yaml"
    first_policy.write_text(ROUND_TRIP_POLICY)
    first = DaemonProcess(write_config(tmp_path / "first.yaml.cfg", **config(
        host, tmp_path, policy=str(first_policy), api={"unix_socket": str(sock)})), tmp_path)
    try:
        first.wait_ready()
        tuned = tree_state(root)
        sock_inode = sock.stat().st_ino
        second_dir = tmp_path / "second"
        second_dir.mkdir()
        other_policy = second_dir / "other.yaml"
        other_policy.write_text("name: other\nsysctl:\n  vm.swappiness: 33\n")
        second = DaemonProcess(write_config(second_dir / "daemon.yaml", **config(
            host, tmp_path, policy=str(other_policy), api={"unix_socket": str(sock)},
            gateway={"port": free_port()})), second_dir)
        try:
            assert second.proc.wait(60) != 0
        finally:
            second.stop()
        out = second.output()
        assert f"another hosttune daemon (pid {first.proc.pid}) is running" in out, out
        # It wrote nothing, started nothing, unlinked nothing: the host holds the first policy, the first
        # daemon's socket is the same file and still serves.
        assert tree_state(root) == tuned
        assert sock.stat().st_ino == sock_inode
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://daemon") as c:
            assert c.get("/healthz").status_code == 200
        assert second.notify.messages == []
    finally:
        assert first.stop() == 0
    # Once the first is gone the lock is free again (the kernel drops it with the process).
    (tmp_path / "third").mkdir()
    third = DaemonProcess(write_config(tmp_path / "third/daemon.yaml", **config(
        host, tmp_path, api={"port": free_port()})), tmp_path / "third")
    try:
        third.wait_ready()
    finally:
        assert third.stop() == 0


def revert_cli(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HOSTTUNE), "revert", "--state-dir", str(tmp_path / "state")], capture_output=True,
                          text=True, timeout=60)


def test_lifetime_lock_file_is_private_and_names_the_holder(tmp_path: Path) -> None:
    from agent.daemon.lifetime import DaemonRunning, LifetimeLock

    first = LifetimeLock(tmp_path / "state")
    first.acquire()
    try:
        assert (tmp_path / "state/daemon.lock").stat().st_mode & 0o077 == 0
        with pytest.raises(DaemonRunning, match=r"pid \d+"):
            LifetimeLock(tmp_path / "state").acquire()
        assert (tmp_path / "state/daemon.lock").read_text().strip().isdigit()
    finally:
        first.release()
    LifetimeLock(tmp_path / "state").acquire()


_ = signal  # used by the signal tests below
