"""`hosttune daemon` as a real process on a fixture host tree: the start sequence and READY, STATUS and WATCHDOG
messages on a notify socket, the API on a real uvicorn (TCP loopback and a 0600 unix socket), SIGHUP applying the
policy difference, SIGTERM leaving the host tuned (or reverting it with revert_on_stop), a command worker under
the supervisor, and the refusals (readable token, bad config)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.bench.llama_local import free_port
from agent.hostfs import HostPaths
from tests.support.daemon_fixtures import (
    HOSTTUNE,
    ROUND_TRIP_POLICY,
    DaemonProcess,
    no_gpu_sim,
    write_config,
)
from tests.support.trees import tree_state
from tests.support.worker_fakes import worker_python

pytestmark = pytest.mark.slow


def base_config(host: HostPaths, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"state_dir": str(tmp_path / "state"), "procfs": str(host.procfs), "sysfs": str(host.sysfs),
            "rootfs": str(host.rootfs), "nvml_sim": str(no_gpu_sim(tmp_path)), "drift_check_s": 0,
            "telemetry_interval_s": 1, "api": {"port": free_port()}, **extra}


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(ROUND_TRIP_POLICY)
    return path


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.stop()


def token(tmp_path: Path) -> str:
    return (tmp_path / "state/api.token").read_text().strip()


def read(host: HostPaths, rel: str) -> str:
    return (host.procfs.parent / rel).read_text()


def test_ready_only_after_policy_applied_and_api_listening(host: HostPaths, tmp_path: Path, policy_file: Path,
                                                           daemons: list[DaemonProcess]) -> None:
    cfg = base_config(host, tmp_path, policy=str(policy_file))
    port = cfg["api"]["port"]
    seen_at_ready: dict[str, Any] = {}

    def on_message(fields: dict[str, str]) -> None:
        # Runs the moment READY arrives: the host must already be tuned and the API must already answer.
        if fields.get("READY") == "1" and not seen_at_ready:
            seen_at_ready["swappiness"] = read(host, "proc/sys/vm/swappiness").strip()
            seen_at_ready["healthz"] = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code

    d = DaemonProcess(write_config(tmp_path / "daemon.yaml", **cfg), tmp_path, watchdog_usec=400_000)
    d.notify.on_message = on_message
    daemons.append(d)
    ready = d.wait_ready()
    assert seen_at_ready == {"swappiness": "7", "healthz": 200}
    statuses = d.notify.statuses()
    assert statuses[0] == "checking for an interrupted transaction"
    assert "applying policy " + str(policy_file) in statuses
    assert any(s.startswith("policy api-round-trip applied (3 changed)") for s in statuses)
    ready_fields = d.notify.messages[ready][1]
    assert ready_fields["STATUS"].startswith("ready: policy ")
    assert f"API http://127.0.0.1:{port}" in ready_fields["STATUS"]
    assert ready_fields["MAINPID"] == str(d.proc.pid)
    # Watchdog pings at half of WATCHDOG_USEC (0.2 s): several arrive within a second after READY.
    first = d.notify.wait_for("WATCHDOG", "1", after=ready)
    d.notify.wait_for("WATCHDOG", "1", after=first + 1, timeout_s=2)
    mode = stat.S_IMODE((tmp_path / "state/api.token").stat().st_mode)
    assert mode == 0o600


def test_every_v1_route_refuses_on_a_real_uvicorn(host: HostPaths, tmp_path: Path,
                                                  daemons: list[DaemonProcess]) -> None:
    cfg = base_config(host, tmp_path)
    base = f"http://127.0.0.1:{cfg['api']['port']}"
    d = DaemonProcess(write_config(tmp_path / "daemon.yaml", **cfg), tmp_path)
    daemons.append(d)
    d.wait_ready()
    spec = httpx.get(f"{base}/openapi.json").json()
    routes = [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops if p.startswith("/v1")]
    assert len(routes) >= 13
    good = {"Authorization": f"Bearer {token(tmp_path)}"}
    for method, path in routes:
        url = base + path.replace("{name}", "base")
        for headers in ({}, {"Authorization": "Bearer not-the-token-not-the-token"}):
            r = httpx.request(method, url, headers=headers, json={"name": "base"})
            assert r.status_code == 401, (method, path, r.text)
    r = httpx.post(f"{base}/v1/plan", headers=good, json={"yaml": ROUND_TRIP_POLICY})
    assert r.status_code == 200 and r.json()["counts"]["change"] == 3
    # Telemetry runs at 1 Hz in the daemon: samples and the Prometheus exposition are there.
    # READY can come before the first tick on a loaded machine: wait (bounded) for the first sample.
    deadline = time.monotonic() + 10
    while (samples := httpx.get(f"{base}/v1/telemetry?seconds=30", headers=good).json())["count"] < 1:
        assert time.monotonic() < deadline, "no telemetry sample within 10 s of READY"
        time.sleep(0.2)
    assert samples["count"] >= 1 and samples["samples"][0]["host"] is not None
    metrics = httpx.get(f"{base}/metrics").text
    assert "hosttune_telemetry_last_sample_timestamp_seconds" in metrics


@pytest.mark.host("server")
def test_sighup_applies_the_difference_and_sigterm_leaves_tuning(host: HostPaths, tmp_path: Path,
                                                                 policy_file: Path,
                                                                 daemons: list[DaemonProcess]) -> None:
    root = host.procfs.parent
    before = tree_state(root)
    thp_before = read(host, "sys/kernel/mm/transparent_hugepage/enabled")
    d = DaemonProcess(write_config(tmp_path / "daemon.yaml", **base_config(host, tmp_path, policy=str(policy_file))),
                      tmp_path)
    daemons.append(d)
    first_ready = d.wait_ready()
    hugepages_file = root / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    hugepages_mtime = hugepages_file.stat().st_mtime_ns

    # New policy: swappiness changes, THP is dropped (so restored to its original), hugepages stay the same.
    policy_file.write_text("name: api-round-trip\nsysctl:\n  vm.swappiness: 9\nhugepages:\n  - {size: 2M, count: 16}\n")
    d.signal(signal.SIGHUP)
    d.notify.wait_for("RELOADING", "1", after=first_ready)
    reloaded = d.notify.wait_for("READY", "1", after=first_ready + 1)
    status = d.notify.messages[reloaded][1]["STATUS"]
    assert status.startswith("reloaded: policy api-round-trip: 2 writes"), status
    assert read(host, "proc/sys/vm/swappiness").strip() == "9"
    assert read(host, "sys/kernel/mm/transparent_hugepage/enabled") == thp_before
    assert hugepages_file.read_text().strip() == "16"
    assert hugepages_file.stat().st_mtime_ns == hugepages_mtime, "an unchanged tunable was rewritten"

    assert d.stop() == 0
    assert any(f.get("STOPPING") == "1" for _, f in d.notify.messages)
    # revert_on_stop is false: the host stays tuned and the journal still knows how to revert it.
    assert read(host, "proc/sys/vm/swappiness").strip() == "9"
    r = subprocess.run([str(HOSTTUNE), "revert", "--state-dir", str(tmp_path / "state")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert tree_state(root) == before


def test_revert_on_stop_restores_the_host(host: HostPaths, tmp_path: Path, policy_file: Path,
                                          daemons: list[DaemonProcess]) -> None:
    root = host.procfs.parent
    before = tree_state(root)
    cfg = base_config(host, tmp_path, policy=str(policy_file), revert_on_stop=True)
    d = DaemonProcess(write_config(tmp_path / "daemon.yaml", **cfg), tmp_path)
    daemons.append(d)
    d.wait_ready()
    assert tree_state(root) != before
    assert d.stop() == 0
    assert tree_state(root) == before


def test_unix_socket_api_is_0600(host: HostPaths, tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    sock = tmp_path / "run/api.sock"
    cfg = base_config(host, tmp_path, api={"unix_socket": str(sock)})
    d = DaemonProcess(write_config(tmp_path / "daemon.yaml", **cfg), tmp_path)
    daemons.append(d)
    ready = d.wait_ready()
    assert f"API unix:{sock}" in d.notify.messages[ready][1]["STATUS"]
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://daemon") as c:
        assert c.get("/v1/status").status_code == 401
        r = c.get("/v1/status", headers={"Authorization": f"Bearer {token(tmp_path)}"})
        assert r.status_code == 200 and r.json()["applied"] is None
        c.post("/v1/revert", headers={"Authorization": f"Bearer {token(tmp_path)}"})
    audit = (tmp_path / "state/audit.log").read_text()
    assert '"client": "unix"' in audit
    assert d.stop() == 0
    assert not sock.exists()


def test_command_worker_is_supervised_and_stopped_cleanly(host: HostPaths, tmp_path: Path,
                                                          daemons: list[DaemonProcess]) -> None:
    wport = free_port()
    policy = _http_worker_policy(tmp_path, wport)
    cfg = _live_roots(base_config(host, tmp_path, policy=str(policy), gateway={"port": free_port()}))
    base = f"http://127.0.0.1:{cfg['api']['port']}"
    d = DaemonProcess(write_config(tmp_path / "daemon.yaml", **cfg), tmp_path)
    daemons.append(d)
    ready = d.wait_ready()
    assert "worker ready" in d.notify.statuses()
    assert "worker ready" in d.notify.messages[ready][1]["STATUS"]
    good = {"Authorization": f"Bearer {token(tmp_path)}"}
    worker = httpx.get(f"{base}/v1/worker", headers=good).json()
    assert worker["state"] == "ready" and worker["pid"]
    first_pid = worker["pid"]
    assert httpx.get(f"http://127.0.0.1:{wport}/", timeout=5).status_code == 200
    # The gateway is up in front of the worker.
    gw = httpx.get(f"http://127.0.0.1:{cfg['gateway']['port']}/health", timeout=5)
    assert gw.status_code == 200 and gw.json()["worker_ready"] is True

    restarted = httpx.post(f"{base}/v1/worker/restart", headers=good, timeout=30)
    assert restarted.status_code == 200
    new_pid = None
    for _ in range(100):
        w = httpx.get(f"{base}/v1/worker", headers=good).json()
        if w["state"] == "ready" and w["pid"] != first_pid:
            new_pid = w["pid"]
            break
        time.sleep(0.1)
    assert new_pid is not None, "worker not restarted"
    assert not _alive(first_pid)

    assert d.stop() == 0
    assert not _alive(new_pid), "the worker outlived the daemon"
    state = (tmp_path / "state/worker/state.json").read_text()
    assert '"state": "stopped"' in state or '"state":"stopped"' in state


def test_readable_token_refuses_to_start_and_writes_nothing(host: HostPaths, tmp_path: Path,
                                                            policy_file: Path) -> None:
    root = host.procfs.parent
    before = tree_state(root)
    state = tmp_path / "state"
    state.mkdir()
    (state / "api.token").write_text("t" * 40)
    os.chmod(state / "api.token", 0o644)
    cfg = base_config(host, tmp_path, policy=str(policy_file))
    r = subprocess.run([str(HOSTTUNE), "daemon", "--config", str(write_config(tmp_path / "d.yaml", **cfg))],
                       capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if not k.startswith("HOSTTUNE_")})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"hosttune: error: {state / 'api.token'}: ")
    assert "refusing to start" in r.stderr
    assert tree_state(root) == before


def test_interrupted_transaction_is_rolled_back_at_start(host: HostPaths, tmp_path: Path, policy_file: Path,
                                                         daemons: list[DaemonProcess]) -> None:
    root = host.procfs.parent
    before = tree_state(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTTUNE_")}
    crash = subprocess.run([str(HOSTTUNE), "apply", str(policy_file), "--state-dir", str(tmp_path / "state"),
                            "--procfs", str(host.procfs), "--sysfs", str(host.sysfs), "--rootfs", str(host.rootfs)],
                           env={**env, "HOSTTUNE_CRASH_AFTER_WRITES": "2"}, capture_output=True, timeout=60)
    assert crash.returncode == -signal.SIGKILL
    assert tree_state(root) != before
    d = DaemonProcess(write_config(tmp_path / "daemon.yaml", **base_config(host, tmp_path)), tmp_path)
    daemons.append(d)
    d.wait_ready()
    assert any(s.startswith("rolled back interrupted apply of api-round-trip") for s in d.notify.statuses())
    assert tree_state(root) == before


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def test_drift_job_reports_and_reapplies(host: HostPaths, tmp_path: Path, policy_file: Path,
                                         daemons: list[DaemonProcess]) -> None:
    cfg = base_config(host, tmp_path, policy=str(policy_file), drift_check_s=0.5, reapply_on_drift=True)
    d = DaemonProcess(write_config(tmp_path / "daemon.yaml", **cfg), tmp_path)
    daemons.append(d)
    ready = d.wait_ready()
    swappiness = host.procfs / "sys/vm/swappiness"
    assert swappiness.read_text().strip() == "7"
    swappiness.write_text("55\n")  # someone else changes a tuned value behind the daemon's back
    i = d.notify.wait_for("STATUS", "drift: 1 tunables drifted (re-applied)", after=ready, timeout_s=15)
    assert i > ready
    assert swappiness.read_text().strip() == "7"
    good = {"Authorization": f"Bearer {token(tmp_path)}"}
    status = httpx.get(f"http://127.0.0.1:{cfg['api']['port']}/v1/status", headers=good).json()
    kinds = [e["kind"] for e in status["daemon"]["events"]]
    assert "drift" in kinds and kinds.count("apply") >= 2


def _http_worker_policy(tmp_path: Path, port: int, slo: str = "") -> Path:
    policy = tmp_path / "worker-policy.yaml"
    policy.write_text(
        "name: with-worker\n"
        "worker:\n"
        "  engine: command\n"
        f"  port: {port}\n"
        # runs as the unprivileged worker user: an interpreter it can run, serving a directory it can list
        f"  argv: [{worker_python()}, -m, http.server, '{port}', --bind, 127.0.0.1, --directory, /]\n"
        f"  health_url: http://127.0.0.1:{port}/\n"
        "  placement: {mode: none}\n" + slo)
    return policy


def _live_roots(cfg: dict[str, Any]) -> dict[str, Any]:
    # The worker really runs, so it is placed on this machine's facts (live roots): the policy tunes nothing.
    for root in ("procfs", "sysfs", "rootfs"):
        del cfg[root]
    return cfg


def test_controller_runs_when_the_worker_policy_has_an_slo(host: HostPaths, tmp_path: Path,
                                                           daemons: list[DaemonProcess]) -> None:
    wport = free_port()
    policy = _http_worker_policy(tmp_path, wport, "slo:\n  ttft_p95_ms: 800\n")
    cfg = _live_roots(base_config(host, tmp_path, policy=str(policy), gateway={"port": free_port(), "limit": 6},
                                  controller_interval_s=0.5))
    base = f"http://127.0.0.1:{cfg['api']['port']}"
    d = DaemonProcess(write_config(tmp_path / "daemon.yaml", **cfg), tmp_path)
    daemons.append(d)
    d.wait_ready()
    good = {"Authorization": f"Bearer {token(tmp_path)}"}
    deadline = time.monotonic() + 15
    while (ctl := httpx.get(f"{base}/v1/controller", headers=good).json())["status"]["ticks"] < 3:
        assert time.monotonic() < deadline, ctl
        time.sleep(0.2)
    assert ctl["enabled"] is True
    status = ctl["status"]
    assert status["slo"]["ttft_p95_ms"] == 800 and status["limit"] == 6
    # a command worker has the knobs its policy gave (none here): the slow lever has nothing to step
    assert isinstance(ctl["decisions"], list)
    assert d.stop() == 0
    assert "controller_start" in d.output()


def test_controller_is_off_with_the_reason_when_the_policy_has_no_slo(host: HostPaths, tmp_path: Path,
                                                                       daemons: list[DaemonProcess]) -> None:
    wport = free_port()
    policy = _http_worker_policy(tmp_path, wport)
    cfg = _live_roots(base_config(host, tmp_path, policy=str(policy), gateway={"port": free_port()}))
    d = DaemonProcess(write_config(tmp_path / "daemon.yaml", **cfg), tmp_path)
    daemons.append(d)
    d.wait_ready()
    good = {"Authorization": f"Bearer {token(tmp_path)}"}
    ctl = httpx.get(f"http://127.0.0.1:{cfg['api']['port']}/v1/controller", headers=good).json()
    assert ctl == {"enabled": False, "reason": "policy with-worker sets no slo.ttft_p95_ms (nothing to defend)",
                   "decisions": []}


def test_sighup_with_a_new_slo_restarts_the_controller_and_can_turn_it_off(host: HostPaths, tmp_path: Path,
                                                                          daemons: list[DaemonProcess]) -> None:
    wport = free_port()
    policy = _http_worker_policy(tmp_path, wport, "slo:\n  ttft_p95_ms: 800\n")
    cfg = _live_roots(base_config(host, tmp_path, policy=str(policy), gateway={"port": free_port()},
                                  controller_interval_s=0.5))
    config = write_config(tmp_path / "daemon.yaml", **cfg)
    base = f"http://127.0.0.1:{cfg['api']['port']}"
    d = DaemonProcess(config, tmp_path)
    daemons.append(d)
    d.wait_ready()
    good = {"Authorization": f"Bearer {token(tmp_path)}"}

    def controller() -> dict[str, Any]:
        return dict(httpx.get(f"{base}/v1/controller", headers=good).json())

    def wait_for(check: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 15
        while not check(ctl := controller()):
            assert time.monotonic() < deadline, ctl
            time.sleep(0.2)
        return ctl

    wait_for(lambda c: c["enabled"] and c["status"]["slo"]["ttft_p95_ms"] == 800)
    worker_pid = httpx.get(f"{base}/v1/worker", headers=good).json()["pid"]
    # a new SLO only: the controller starts over with it; the worker (same spec) keeps running
    policy.write_text(policy.read_text().replace("ttft_p95_ms: 800", "ttft_p95_ms: 1200"))
    d.signal(signal.SIGHUP)
    wait_for(lambda c: c["enabled"] and c["status"]["slo"]["ttft_p95_ms"] == 1200)
    assert httpx.get(f"{base}/v1/worker", headers=good).json()["pid"] == worker_pid
    # controller_enabled: false in the config: off, with the reason
    write_config(config, **{**cfg, "controller_enabled": False})
    d.signal(signal.SIGHUP)
    off = wait_for(lambda c: not c["enabled"])
    assert off["reason"] == "controller_enabled is false in the daemon config"
    assert d.stop() == 0
