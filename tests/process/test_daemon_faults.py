"""The daemon under faults, as real processes on a fixture host tree: a second daemon on the same state dir,
SIGTERM during a host mutation, SIGHUP while an API apply is in progress.

Mutations are held at a chosen host write with HOSTTUNE_TEST_STALL_AT_WRITES (agent/tuning/writer.py) so a signal
lands mid-transaction deterministically, not by sleeping and hoping."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.bench.llama_local import free_port
from agent.hostfs import HostPaths
from agent.tuning.state import StateDir
from tests.support.daemon_fixtures import ROUND_TRIP_POLICY, DaemonProcess, no_gpu_sim, write_config
from tests.support.trees import tree_state

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


def token(tmp_path: Path) -> str:
    return (tmp_path / "state/api.token").read_text().strip()


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


# -- signals during a host mutation ----------------------------------------------------------------------------
class Stall:
    """The writer's test hold points (HOSTTUNE_TEST_STALL_AT_WRITES, agent/tuning/writer.py)."""

    def __init__(self, tmp_path: Path, at: str) -> None:
        self.dir = tmp_path / "stall"
        self.dir.mkdir()
        self.env = {"HOSTTUNE_TEST_STALL_AT_WRITES": at, "HOSTTUNE_TEST_STALL_DIR": str(self.dir)}

    def wait(self, n: int, d: DaemonProcess, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not (self.dir / f"stalled-{n}").exists():
            assert d.proc.poll() is None, d.output()
            assert time.monotonic() < deadline, f"never stalled at write {n}:\n{d.output()}"
            time.sleep(0.02)

    def release(self, n: int) -> None:
        (self.dir / f"release-{n}").touch()


def post_in_background(url: str, tok: str, body: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["response"] = httpx.post(url, json=body, headers={"Authorization": f"Bearer {tok}"}, timeout=90)
        except httpx.HTTPError as e:
            box["error"] = e

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, box


def start_plain(host: HostPaths, tmp_path: Path, stall: Stall) -> tuple[DaemonProcess, str]:
    cfg = config(host, tmp_path, api={"port": free_port()})
    d = DaemonProcess(write_config(tmp_path / "daemon.yaml", **cfg), tmp_path, env=stall.env)
    d.wait_ready()
    return d, f"http://127.0.0.1:{cfg['api']['port']}"


def test_sigterm_during_an_api_apply_rolls_back_then_exits(host: HostPaths, tmp_path: Path) -> None:
    """The first SIGTERM stops the apply and rolls it back; a second one, mid-rollback, does not abort the
    rollback; then the daemon stops (before: the rollback ran but the daemon kept serving)."""
    root = host.procfs.parent
    before = tree_state(root)
    stall = Stall(tmp_path, "2,3")  # the policy writes 3 files: hold after the 2nd, then in the rollback
    d, base = start_plain(host, tmp_path, stall)
    try:
        thread, box = post_in_background(f"{base}/v1/apply", token(tmp_path), {"yaml": ROUND_TRIP_POLICY})
        stall.wait(2, d)
        d.signal(signal.SIGTERM)
        stall.release(2)
        stall.wait(3, d)  # the rollback's first restore
        d.signal(signal.SIGTERM)
        stall.release(3)
        assert d.proc.wait(30) == 0, d.output()
        thread.join(30)
    finally:
        d.stop()
    assert tree_state(root) == before, "the rollback did not finish"
    journal = StateDir(tmp_path / "state").journal().data
    assert journal.txn is not None and journal.txn.status == "rolled_back"
    assert "interrupted by signal 15" in (journal.txn.error or "")
    assert journal.originals == []
    assert "stopping (SIGTERM)" in d.output()
    if "response" in box:  # the API may already be closed when the answer is ready; never a success
        assert box["response"].status_code >= 400


def test_sighup_while_api_applies_run_completes_all(host: HostPaths, tmp_path: Path) -> None:
    """An API apply in progress, a SIGHUP reload that applies a policy, and a second API apply queued behind the
    first: all three finish (before: the reload and the second request could wait for each other forever)."""
    stall = Stall(tmp_path, "1")
    d, base = start_plain(host, tmp_path, stall)
    try:
        tok = token(tmp_path)
        first, first_box = post_in_background(f"{base}/v1/apply", tok, {"yaml": ROUND_TRIP_POLICY})
        stall.wait(1, d)
        reload_policy = tmp_path / "reload.yaml"
        reload_policy.write_text("name: reloaded\nsysctl:\n  vm.dirty_ratio: 11\n")
        write_config(tmp_path / "daemon.yaml", **config(host, tmp_path, api={"port": int(base.rsplit(":", 1)[1])},
                                                        policy=str(reload_policy)))
        d.signal(signal.SIGHUP)
        second, second_box = post_in_background(f"{base}/v1/apply", tok,
                                                {"policy": {"name": "second", "sysctl": {"vm.swappiness": 3}}})
        time.sleep(0.3)  # lets the second request reach the daemon while the first is held: ordering, not timing
        stall.release(1)
        for t in (first, second):
            t.join(60)
        assert "response" in first_box and first_box["response"].status_code == 200, (first_box, d.output())
        assert "response" in second_box and second_box["response"].status_code == 200, (second_box, d.output())
        deadline = time.monotonic() + 30
        while not any(s.startswith("reloaded: policy reloaded") for s in d.notify.statuses()):
            assert time.monotonic() < deadline, d.notify.statuses()
            time.sleep(0.05)
        events = httpx.get(f"{base}/v1/status", headers={"Authorization": f"Bearer {tok}"},
                           timeout=10).json()["daemon"]["events"]
        assert {e["policy"] for e in events if e["kind"] == "apply"} == {"api-round-trip", "second", "reloaded"}
        assert [e["policy"] for e in events if e["kind"] == "reload"] == ["reloaded"]
    finally:
        assert d.stop() == 0
