"""Supervisor behaviour against a real (fake) HTTP worker process: readiness, crash restarts with backoff,
crash-loop detection, graceful and forced stop, restart with new knobs, log rotation, state file."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.bench.llama_local import free_port
from agent.policy.model import WorkerSpec
from agent.worker.engines import CommandEngine
from agent.worker.launch import Launch
from agent.worker.logs import RotatingLog
from agent.worker.supervisor import RestartPolicy, Supervisor, WorkerState
from tests.support.worker_fakes import write_fake_server

FAST = RestartPolicy(backoff_initial_s=0.2, backoff_factor=2.0, backoff_max_s=2.0, crashloop_count=3,
                     crashloop_window_s=30.0, ready_timeout_s=10.0, startup_poll_s=0.05, liveness_interval_s=0.2,
                     liveness_failures=2, stop_timeout_s=2.0)


def get(url: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as r:
        return json.loads(r.read())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def events(state_dir: Path) -> list[dict]:
    path = state_dir / "worker" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.prefix = write_fake_server(tmp)
        self.starts_file = tmp / "starts.txt"
        self.state_dir = tmp / "state"
        self.sups: list[Supervisor] = []

    def spec(self, *extra: str, port: int | None = None) -> WorkerSpec:
        port = port or free_port()
        argv = [*self.prefix, "--port", str(port), "--starts-file", str(self.starts_file), *extra]
        return WorkerSpec(engine="command", argv=argv, port=port)

    def supervisor(self, spec: WorkerSpec, policy: RestartPolicy = FAST, **kw: object) -> Supervisor:
        engine = CommandEngine(parent_death_signal=None)

        def build(s: WorkerSpec) -> Launch:
            return engine.launch(s, None, None)

        sup = Supervisor(spec, build, state_dir=self.state_dir, policy=policy, **kw)  # type: ignore[arg-type]
        self.sups.append(sup)
        return sup

    def starts(self) -> list[tuple[int, float]]:
        if not self.starts_file.exists():
            return []
        return [(int(p), float(t)) for p, t in (ln.split() for ln in self.starts_file.read_text().splitlines())]


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    for sup in harness.sups:
        sup.stop()
    for pid, _ in harness.starts():  # every process we started is gone
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"fake worker {pid} outlived its supervisor")


def test_start_ready_stop(h: Harness) -> None:
    spec = h.spec("--load-seconds", "0.6")
    sup = h.supervisor(spec)
    seen: list[WorkerState] = []
    sup.add_listener(lambda st: seen.append(st.state))
    sup.start()
    assert sup.wait_ready(10)
    pid = sup.pid
    assert pid is not None and alive(pid)
    assert get(f"{sup.base_url}/pid")["pid"] == pid
    st = sup.status()
    assert st.state == WorkerState.READY and st.starts == 1 and st.restarts == 0
    assert st.load_seconds is not None and st.load_seconds >= 0.6  # 503 while loading was not taken as ready
    on_disk = json.loads((h.state_dir / "worker" / "state.json").read_text())
    assert on_disk["state"] == "ready" and on_disk["pid"] == pid
    sup.stop()
    assert sup.state == WorkerState.STOPPED
    assert not alive(pid)
    assert seen[:2] == [WorkerState.STARTING, WorkerState.READY] and seen[-1] == WorkerState.STOPPED
    assert json.loads((h.state_dir / "worker" / "state.json").read_text())["state"] == "stopped"
    assert any(e["event"] == "stopped" and e.get("how") == "terminated (SIGTERM)" for e in events(h.state_dir))


def test_kill_9_restarts_and_logs_reason(h: Harness) -> None:
    sup = h.supervisor(h.spec())
    sup.start()
    assert sup.wait_ready(10)
    first = sup.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)  # our own child, by PID
    assert sup.wait_for({WorkerState.RESTARTING}, 5)
    assert sup.wait_ready(10)
    second = sup.pid
    assert second is not None and second != first and alive(second)
    assert get(f"{sup.base_url}/pid")["pid"] == second
    st = sup.status()
    assert st.restarts == 1 and st.starts == 2 and st.crashes == 1
    assert st.last_exit == "killed by SIGKILL"
    crash = [e for e in events(h.state_dir) if e["event"] == "crash"]
    assert len(crash) == 1 and "killed by SIGKILL" in crash[0]["reason"]


def test_crash_loop_goes_failed_and_stops_trying(h: Harness) -> None:
    model = h.tmp / "x.gguf"
    sup = h.supervisor(h.spec("--fail-at-start", str(model)))
    sup.start()
    assert sup.wait_for({WorkerState.FAILED}, 15)
    st = sup.status()
    reason = st.reason or ""
    assert "crash loop" in reason and "3 crashes" in reason
    assert str(model) in reason  # the stderr line naming the file is the reason's core
    assert "exit status 1" in reason
    assert any(str(model) in ln for ln in st.stderr_tail)
    starts = len(h.starts())
    assert starts == FAST.crashloop_count
    time.sleep(1.5)  # well past the longest backoff: a spinning supervisor would have started again
    assert len(h.starts()) == starts
    assert sup.status().starts == starts


def test_backoff_grows_between_crash_restarts(h: Harness) -> None:
    policy = RestartPolicy(backoff_initial_s=0.3, backoff_factor=2.0, backoff_max_s=5.0, crashloop_count=4,
                           crashloop_window_s=60.0, startup_poll_s=0.05, stop_timeout_s=2.0)
    sup = h.supervisor(h.spec("--fail-at-start", "m.gguf"), policy=policy)
    sup.start()
    assert sup.wait_for({WorkerState.FAILED}, 20)
    times = [t for _, t in h.starts()]
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for i, gap in enumerate(gaps):  # lower bounds only: the delays are the behaviour, slowness is not
        assert gap >= policy.backoff(i + 1) * 0.95, (i, gaps)
    assert gaps[2] > gaps[0] + 0.5


def test_oom_abort_is_reported_and_restarted(h: Harness) -> None:
    sup = h.supervisor(h.spec())
    sup.start()
    assert sup.wait_ready(10)
    first = sup.pid
    with contextlib.suppress(Exception):
        get(f"{sup.base_url}/oom")
    assert sup.wait_for({WorkerState.RESTARTING}, 5)
    st = sup.status()
    assert st.last_exit is not None and "SIGABRT" in st.last_exit and "out of memory" in st.last_exit
    assert "CUDA error: out of memory" in (st.last_exit_reason or "")
    assert sup.wait_ready(10) and sup.pid != first


def test_stop_escalates_to_sigkill(h: Harness) -> None:
    sup = h.supervisor(h.spec("--ignore-term"))
    sup.start()
    assert sup.wait_ready(10)
    pid = sup.pid
    assert pid is not None
    t0 = time.monotonic()
    sup.stop()
    assert time.monotonic() - t0 >= FAST.stop_timeout_s * 0.9
    assert not alive(pid)
    assert any(e["event"] == "stopped" and "SIGKILL" in e["how"] for e in events(h.state_dir))


def test_restart_with_new_knobs(h: Harness) -> None:
    sup = h.supervisor(h.spec())
    sup.start()
    assert sup.wait_ready(10)
    old_pid, old_url = sup.pid, sup.base_url
    assert old_pid is not None
    new = h.spec()
    sup.restart(new, reason="controller: parallel 4 -> 8")
    assert sup.wait_for({WorkerState.RESTARTING, WorkerState.STARTING}, 5)
    assert sup.wait_ready(10)
    assert sup.base_url != old_url and sup.spec == new
    assert get(f"{sup.base_url}/pid")["pid"] == sup.pid != old_pid
    assert not alive(old_pid)
    st = sup.status()
    assert st.restarts == 1 and st.crashes == 0
    restart = [e for e in events(h.state_dir) if e["event"] == "restart"]
    assert restart and restart[0]["reason"] == "controller: parallel 4 -> 8" and "argv" in restart[0]["changed"]


def test_failed_worker_recovers_on_restart_request(h: Harness) -> None:
    sup = h.supervisor(h.spec("--fail-at-start", "bad.gguf"))
    sup.start()
    assert sup.wait_for({WorkerState.FAILED}, 15)
    sup.restart(h.spec(), reason="fixed the model path")
    assert sup.wait_ready(10)
    assert sup.status().recent_crashes == 0


def test_unhealthy_worker_is_restarted(h: Harness) -> None:
    sup = h.supervisor(h.spec())
    sup.start()
    assert sup.wait_ready(10)
    first = sup.pid
    get(f"{sup.base_url}/sick")
    assert sup.wait_for({WorkerState.RESTARTING}, 5)
    assert "health check failed" in (sup.status().reason or "")
    assert sup.wait_ready(10) and sup.pid != first


def test_not_ready_in_time_counts_as_crash(h: Harness) -> None:
    policy = RestartPolicy(ready_timeout_s=0.5, startup_poll_s=0.05, crashloop_count=2, backoff_initial_s=0.1,
                           stop_timeout_s=2.0)
    sup = h.supervisor(h.spec("--load-seconds", "60"), policy=policy)
    sup.start()
    assert sup.wait_for({WorkerState.FAILED}, 15)
    assert "not ready within 0.5s" in (sup.status().reason or "")
    assert all(not alive(pid) for pid, _ in h.starts())


def test_worker_stderr_is_logged_and_rotated(h: Harness) -> None:
    sup = h.supervisor(h.spec("--chatty", "400"), log_max_bytes=8192, log_backups=2)
    sup.start()
    assert sup.wait_ready(10)
    sup.stop()
    logdir = h.state_dir / "worker"
    assert (logdir / "stderr.log").exists() and (logdir / "stderr.log.1").exists()
    assert (logdir / "stderr.log").stat().st_size <= 8192
    assert not (logdir / "stderr.log.3").exists()
    text = "".join((logdir / n).read_text() for n in ("stderr.log.2", "stderr.log.1", "stderr.log")
                   if (logdir / n).exists())
    assert "log line 399" in text


def test_rotating_log_keeps_backups(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "a.log", max_bytes=100, backups=2)
    for i in range(10):
        log.write(f"{i:02d}".encode() * 20 + b"\n")  # 41 bytes each: two per file
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.log", "a.log.1", "a.log.2"]
    assert (tmp_path / "a.log").read_bytes().startswith(b"08")
    assert (tmp_path / "a.log.2").read_bytes().startswith(b"04")


def test_a_squatter_on_the_worker_port_does_not_make_it_ready(h: Harness, tmp_path: Path) -> None:
    """A local user binds the worker's port first and answers /health with 200: the worker is not ready while a
    listener on its port belongs to another uid (the gateway would send clients' prompts to the squatter). The
    socket table says who owns the port (/proc/net/tcp: the unit hides the worker's own /proc entry)."""
    import http.server
    import sys
    import threading

    from agent.hostfs import HostPaths

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    squatter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    port = squatter.server_address[1]
    procfs = tmp_path / "proc"
    (procfs / "net").mkdir(parents=True)
    head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    (procfs / "net" / "tcp").write_text(head + f"   0: 0100007F:{port:04X} 00000000:0000 0A 00000000:00000000 "
                                        f"00:00000000 00000000 {os.getuid() + 4242} 0 1 1 0 100 0 0 10 0\n")
    paths = HostPaths(procfs=procfs, sysfs=tmp_path / "sys", rootfs=tmp_path)
    try:
        spec = WorkerSpec(engine="command", argv=[sys.executable, "-c", "import time; time.sleep(30)"], port=port)
        sup = h.supervisor(spec, paths=paths)
        sup.start()
        assert not sup.wait_ready(1.5)
        assert sup.state == WorkerState.STARTING
        sup.stop()
    finally:
        squatter.shutdown()
        squatter.server_close()


def test_port_listeners_reads_the_live_socket_table() -> None:
    import socket

    from agent.hostfs import HostPaths
    from agent.worker.probes import listens_on_own_port, port_listeners

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert port_listeners(HostPaths.live(), port) == [os.getuid()]
        assert listens_on_own_port(HostPaths.live(), os.getuid(), f"http://127.0.0.1:{port}")
        assert not listens_on_own_port(HostPaths.live(), os.getuid() + 1, f"http://127.0.0.1:{port}")
    assert not listens_on_own_port(HostPaths.live(), os.getuid(), f"http://127.0.0.1:{port}")  # nobody listens


@pytest.mark.root
def test_a_worker_under_its_own_uid_is_ready_and_owns_its_port(tmp_path: Path) -> None:
    """As root: the worker drops to nobody, binds its port as nobody, and the uid check takes it for the worker."""
    if os.geteuid() != 0:
        pytest.skip("needs root (the worker drops to nobody)")
    from agent.worker.privdrop import RunAs

    port = free_port()
    engine = CommandEngine(parent_death_signal=None, run_as=RunAs("nobody", 65534, 65534))
    spec = WorkerSpec(engine="command", argv=["/usr/bin/python3", "-m", "http.server", str(port), "--bind",
                                              "127.0.0.1", "--directory", "/"],
                      port=port, health_url=f"http://127.0.0.1:{port}/")
    sup = Supervisor(spec, lambda s: engine.launch(s, None, None), state_dir=tmp_path / "state", policy=FAST)
    sup.start()
    try:
        assert sup.wait_ready(15), sup.status()
    finally:
        sup.stop()


def test_ready_worker_reports_its_smaps_rollup_in_status_and_state_file(h: Harness) -> None:
    sup = h.supervisor(h.spec(), policy=dataclasses.replace(FAST, memory_sample_s=0.2))
    sup.start()
    assert sup.wait_ready(10)
    first = sup.status().memory
    assert first is not None and first.pid == sup.pid and first.error is None  # read at the ready transition
    assert first.rss_bytes is not None and first.rss_bytes > 0 and first.anonymous_bytes is not None
    deadline = time.monotonic() + 10
    while (later := sup.status().memory) is not None and later.at == first.at and time.monotonic() < deadline:
        time.sleep(0.1)
    assert later is not None and later.at > first.at  # sampled again while ready
    on_disk = json.loads((h.state_dir / "worker" / "state.json").read_text())
    assert on_disk["memory"]["pid"] == sup.pid and on_disk["memory"]["rss_bytes"] > 0
