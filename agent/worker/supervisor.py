"""Supervise one inference worker process: start it placed, wait for readiness, restart it after crashes with
exponential backoff, give up on a crash loop, stop it gracefully, and restart it with new knobs on request.

State machine (every transition is timestamped, written to the state file and told to listeners):

    stopped -> starting -> ready
                  ^          | crash / failed health checks / not ready in time
                  |          v
                  +---- restarting --(K crashes within T seconds)--> failed
    restart(new_spec) from any state -> restarting -> starting;  stop() from any state -> stopped

One thread runs the loop; it sleeps on a condition variable that the process-exit waiter and the public methods
notify, so nothing polls faster than the health-check interval. The worker runs in its own session (Ctrl-C on the
terminal reaches hosttune, which then stops the worker in order) and, through the exec shim, gets SIGTERM from the
kernel if the supervising thread dies without stopping it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import HostTuneError
from agent.fsio import atomic_write_json
from agent.hostfs import HostPaths
from agent.policy.model import WorkerSpec
from agent.worker import pagecache
from agent.worker.exits import OOM_HINT, describe_exit, key_stderr_line, read_oom_kills
from agent.worker.launch import Launch
from agent.worker.logs import RotatingLog
from agent.worker.pagecache import PrewarmResult
from agent.worker.probes import listens_on_own_port, probe_health, worker_ids, worker_uid
from agent.worker.process import STDERR_TAIL_LINES, WorkerProcess, start_pipe_threads
from agent.worker.smaps import MEMORY_SAMPLE_S, WorkerMemory, read_worker_memory
from agent.worker.status import Transition, WorkerState, WorkerStatus

log = logging.getLogger("hosttune.worker")


@dataclass(frozen=True)
class RestartPolicy:
    """Timings of supervision. K = crashloop_count crashes within T = crashloop_window_s seconds -> failed."""

    backoff_initial_s: float = 1.0
    backoff_factor: float = 2.0
    backoff_max_s: float = 30.0
    crashloop_count: int = 5
    crashloop_window_s: float = 120.0
    ready_timeout_s: float = 300.0
    startup_poll_s: float = 0.1
    liveness_interval_s: float = 5.0
    liveness_failures: int = 3
    stop_timeout_s: float = 10.0
    probe_timeout_s: float = 2.0
    memory_sample_s: float = MEMORY_SAMPLE_S  # the worker's smaps_rollup into its status, while ready

    def backoff(self, crashes: int) -> float:
        """Delay before the next start after `crashes` recent crashes (1 -> initial)."""
        return min(self.backoff_max_s, self.backoff_initial_s * self.backoff_factor ** max(0, crashes - 1))


Listener = Callable[[WorkerStatus], None]


class Supervisor:
    """Run and keep alive one worker. `build(spec)` turns a WorkerSpec into a Launch (argv, env, URLs)."""

    def __init__(self, spec: WorkerSpec, build: Callable[[WorkerSpec], Launch], *, state_dir: Path | None = None,
                 policy: RestartPolicy | None = None, paths: HostPaths | None = None,
                 log_max_bytes: int = 10 * 1024 * 1024, log_backups: int = 3, prewarm: bool | None = None,
                 drop_cache_first: bool = False) -> None:
        self._spec = spec
        self._build = build
        self.policy = policy or RestartPolicy()
        self._paths = paths or HostPaths.live()
        self._prewarm = spec.prewarm if prewarm is None else prewarm
        self._drop_cache_first = drop_cache_first
        self._dir = state_dir / "worker" if state_dir is not None else None
        self._log_max = log_max_bytes
        self._log_backups = log_backups
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop_requested = False
        self._restart_request: tuple[WorkerSpec, str] | None = None
        self._proc: WorkerProcess | None = None
        self._crash_times: collections.deque[float] = collections.deque()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._listeners: list[Listener] = []
        self.ready = threading.Event()
        self._status = WorkerStatus(state=WorkerState.STOPPED, since=time.time(), supervisor_pid=os.getpid(),
                                    spec=spec.model_dump(mode="json"))
        self._status.transitions.append(Transition(state=WorkerState.STOPPED, at=self._status.since))
        self._stdout_log: RotatingLog | None = None
        self._stderr_log: RotatingLog | None = None
        self._events: RotatingLog | None = None
        if self._dir is not None:
            self._stdout_log = RotatingLog(self._dir / "stdout.log", log_max_bytes, log_backups)
            self._stderr_log = RotatingLog(self._dir / "stderr.log", log_max_bytes, log_backups)
            self._events = RotatingLog(self._dir / "events.jsonl", 1024 * 1024, 2)

    # ----- public API -------------------------------------------------------------------------------------------

    @property
    def state(self) -> WorkerState:
        return self._status.state

    @property
    def spec(self) -> WorkerSpec:
        return self._spec

    @property
    def pid(self) -> int | None:
        return self._status.pid

    @property
    def base_url(self) -> str | None:
        return self._status.base_url

    @property
    def state_file(self) -> Path | None:
        return self._dir / "state.json" if self._dir is not None else None

    def status(self) -> WorkerStatus:
        with self._cond:
            return self._status.model_copy(deep=True)

    def add_listener(self, callback: Listener) -> None:
        """Call `callback(status)` after every state transition (from the supervisor thread; keep it short)."""
        self._listeners.append(callback)

    def start(self) -> None:
        """Start supervising in a background thread (no-op when already running)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop_requested = False
            if self._status.state == WorkerState.FAILED:  # a new start re-arms a failed worker
                self._restart_request = (self._spec, "start after failure")
            self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> WorkerStatus:
        """Stop the worker (SIGTERM, then SIGKILL after policy.stop_timeout_s) and the supervisor thread."""
        with self._cond:
            self._stop_requested = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout if timeout is not None else self.policy.stop_timeout_s + 10)
        return self.status()

    def restart(self, new_spec: WorkerSpec | None = None, reason: str = "restart requested") -> None:
        """Restart the worker, with new knobs when new_spec is given. Clears a `failed` state. Returns at once;
        wait_ready() waits for the new process to answer."""
        with self._cond:
            self._restart_request = (new_spec or self._spec, reason)
            self.ready.clear()
            self._cond.notify_all()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.ready.wait(timeout)

    def wait_for(self, states: set[WorkerState], timeout: float | None = None) -> bool:
        """Block until the state is one of `states` (True) or the timeout passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._status.state in states, timeout)

    # ----- state bookkeeping ------------------------------------------------------------------------------------

    def _event(self, event: str, **fields: Any) -> None:
        record = {"at": time.time(), "event": event, **{k: v for k, v in fields.items() if v is not None}}
        log.info("worker %s %s", event, {k: v for k, v in fields.items() if v is not None})
        if self._events is not None:
            self._events.write_json(record)

    def _set_state(self, state: WorkerState, reason: str | None = None, **changes: Any) -> None:
        with self._cond:
            now = time.time()
            st = self._status
            for k, v in changes.items():
                setattr(st, k, v)
            if state != st.state or reason != st.reason:
                st.transitions = [*st.transitions[-19:], Transition(state=state, at=now, reason=reason)]
            st.state, st.since, st.reason = state, now, reason
            st.recent_crashes = len(self._crash_times)
            st.stderr_tail = list(self._stderr_tail)[-15:]
            snapshot = st.model_copy(deep=True)
            # Written before anyone is woken: whoever sees the new state in memory finds it on disk too.
            self._write_state(snapshot)
            if state == WorkerState.READY:
                self.ready.set()
            else:
                self.ready.clear()
            self._cond.notify_all()
        self._event("state", state=state.value, reason=reason, pid=snapshot.pid)
        for cb in list(self._listeners):
            try:
                cb(snapshot)
            except Exception:
                log.exception("worker state listener failed")

    def _write_state(self, status: WorkerStatus) -> None:
        if self.state_file is None:
            return
        try:
            atomic_write_json(self.state_file, status.model_dump(mode="json"))
        except HostTuneError as e:
            log.warning("cannot write worker state: %s", e)

    # ----- the loop ---------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # a bug must not leave a worker running unsupervised
            log.exception("worker supervisor crashed")
            self._kill_current("supervisor error")
            self._set_state(WorkerState.FAILED, f"supervisor error: {e}", pid=None)
            return
        self._kill_current("stop requested")
        if self._status.state != WorkerState.FAILED:  # failed stays failed: its reason is what the user needs
            self._set_state(WorkerState.STOPPED, "stop requested", pid=None, next_start_in_s=None)

    def _take_restart(self) -> tuple[WorkerSpec, str] | None:
        with self._cond:
            req, self._restart_request = self._restart_request, None
            return req

    def _apply_restart(self, req: tuple[WorkerSpec, str]) -> None:
        spec, reason = req
        changed = sorted(k for k, v in spec.model_dump().items() if self._spec.model_dump().get(k) != v)
        self._spec = spec
        self._crash_times.clear()
        with self._cond:
            self._status.restarts += 1
            self._status.spec = spec.model_dump(mode="json")
        self._event("restart", reason=reason, changed=changed or None)
        self._set_state(WorkerState.RESTARTING, reason, pid=None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stop_requested:
                    return
                if self._status.state == WorkerState.FAILED and self._restart_request is None:
                    self._cond.wait()  # failed: do nothing until told to restart or stop
                    continue
            req = self._take_restart()
            if req is not None:
                self._apply_restart(req)
            outcome, reason = self._run_once()
            if outcome == "stop":
                return
            if outcome == "restart":
                continue
            if outcome == "config":
                self._set_state(WorkerState.FAILED, reason, pid=None)
                continue
            # a crash
            now = time.monotonic()
            self._crash_times.append(now)
            while self._crash_times and now - self._crash_times[0] > self.policy.crashloop_window_s:
                self._crash_times.popleft()
            with self._cond:
                self._status.crashes += 1
            n = len(self._crash_times)
            if n >= self.policy.crashloop_count:
                window = self.policy.crashloop_window_s
                self._event("crashloop", reason=reason, crashes=n)
                self._set_state(WorkerState.FAILED, f"crash loop: {n} crashes within {window:g}s, not retrying; "
                                                    f"last: {reason}", pid=None, next_start_in_s=None)
                continue
            delay = self.policy.backoff(n)
            self._event("crash", reason=reason, next_start_in_s=round(delay, 3))
            with self._cond:
                self._status.restarts += 1
            self._set_state(WorkerState.RESTARTING, f"{reason}; restarting in {delay:.2g}s", pid=None,
                            next_start_in_s=round(delay, 3))
            with self._cond:
                self._cond.wait_for(lambda: self._stop_requested or self._restart_request is not None, delay)

    def _run_once(self) -> tuple[str, str]:
        """Spawn one process and watch it. Returns (outcome, reason): stop, restart, crash or config."""
        try:
            launch = self._build(self._spec)
        except HostTuneError as e:
            return "config", f"cannot build the worker command: {e}"
        resident, prewarmed = self._prepare_model(launch)
        self._stderr_tail.clear()
        self._log_line(f"=== start {self._status.starts + 1}: {' '.join(launch.argv)}")
        oom_before = read_oom_kills(self._paths)
        try:
            popen = subprocess.Popen(launch.argv, env=launch.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        except OSError as e:
            with self._cond:
                self._status.starts += 1
            return "crash", f"cannot start {launch.argv[0]}: {e.strerror}"
        proc = WorkerProcess(popen=popen, launch=launch, spawned=time.monotonic(), oom_kills_before=oom_before)
        with self._cond:
            self._proc = proc
            self._status.starts += 1
        start_pipe_threads(proc, self._cond, self._stdout_log, self._stderr_log, self._stderr_tail)
        self._set_state(
            WorkerState.STARTING, f"start {self._status.starts}", pid=popen.pid, engine=launch.engine,
            model=str(launch.model) if launch.model else None, base_url=launch.base_url,
            health_url=launch.health_url, metrics_url=launch.metrics_url, argv=launch.argv,
            placement=launch.placement, binding=launch.binding.mechanism, resident_at_start=resident,
            prewarm=prewarmed if prewarmed is not None else self._status.prewarm, next_start_in_s=None,
            ready_at=None, load_seconds=None, memory=None)
        try:
            return self._watch(proc)
        finally:
            with self._cond:
                self._proc = None

    def _prepare_model(self, launch: Launch) -> tuple[float | None, PrewarmResult | None]:
        if launch.model is None:
            return None, None
        prewarmed = None
        try:
            if self._drop_cache_first:
                pagecache.drop(launch.model)
            if self._prewarm:
                prewarmed = pagecache.prewarm(launch.model)
                self._event("prewarm", seconds=prewarmed.seconds, bytes=prewarmed.bytes_read)
        except HostTuneError as e:
            log.warning("model page-cache preparation failed: %s", e)
        return pagecache.resident_fraction(launch.model), prewarmed

    def _watch(self, proc: WorkerProcess) -> tuple[str, str]:
        pol = self.policy
        failures = 0
        memory_due = 0.0
        while True:
            with self._cond:
                ready = self._status.state == WorkerState.READY
                interval = pol.liveness_interval_s if ready else pol.startup_poll_s
                self._cond.wait_for(lambda: proc.exited or self._stop_requested
                                    or self._restart_request is not None, interval)
                stop, restart, exited = self._stop_requested, self._restart_request is not None, proc.exited
            if stop or restart:
                how = self._terminate(proc)
                self._event("stopped", pid=proc.popen.pid, how=how, reason="stop" if stop else "restart")
                return ("stop", "stop requested") if stop else ("restart", "restart requested")
            if exited:
                return "crash", self._crash_reason(proc)
            code = self._probe(proc.launch.health_url)
            if not ready:
                if code == 200 and not listens_on_own_port(self._paths, worker_uid(proc.launch),
                                                           proc.launch.base_url):
                    code = None  # someone else answers on the worker's port (a local user who bound it first)
                if code == 200:
                    load = time.monotonic() - proc.spawned
                    self._event("ready", pid=proc.popen.pid, load_seconds=round(load, 3))
                    self._set_state(WorkerState.READY, "health check answered 200", ready_at=time.time(),
                                    load_seconds=round(load, 3), memory=self._read_memory(proc))
                    memory_due = time.monotonic() + pol.memory_sample_s
                elif time.monotonic() - proc.spawned > pol.ready_timeout_s:
                    self._terminate(proc)
                    return "crash", f"not ready within {pol.ready_timeout_s:g}s (last health answer: {code})"
            elif code == 200:
                failures = 0
                if time.monotonic() >= memory_due:
                    memory_due = self._sample_memory(proc)
            else:
                failures += 1
                if failures >= pol.liveness_failures:
                    self._terminate(proc)
                    return "crash", f"health check failed {failures} times in a row (last answer: {code})"

    def _read_memory(self, proc: WorkerProcess) -> WorkerMemory:
        uid, gid = worker_ids(proc.launch) or (None, None)
        return read_worker_memory(self._paths, proc.popen.pid, uid, gid, model=proc.launch.model,
                                  engine=proc.launch.engine)

    def _sample_memory(self, proc: WorkerProcess) -> float:
        """The worker's smaps_rollup into its status and state file; returns when the next reading is due."""
        mem = self._read_memory(proc)
        with self._cond:
            self._status.memory = mem
            snapshot = self._status.model_copy(deep=True)
        self._write_state(snapshot)
        return time.monotonic() + self.policy.memory_sample_s

    def _crash_reason(self, proc: WorkerProcess) -> str:
        rc = proc.popen.returncode
        why = describe_exit(rc if rc is not None else -1)
        tail = list(self._stderr_tail)
        oom_after = read_oom_kills(self._paths)
        if rc == -signal.SIGKILL and proc.oom_kills_before is not None and oom_after is not None \
                and oom_after > proc.oom_kills_before:
            why += " (the kernel OOM killer ran)"
        elif any(OOM_HINT.search(ln) for ln in tail[-10:]):
            why += " (out of memory)"
        line = key_stderr_line(tail, proc.launch.model)
        reason = f"{why}: {line}" if line else why
        with self._cond:
            self._status.last_exit = why
            self._status.last_exit_reason = reason
        return reason

    # ----- process plumbing -------------------------------------------------------------------------------------

    def _probe(self, url: str) -> int | None:
        return probe_health(url, self.policy.probe_timeout_s)

    def _terminate(self, proc: WorkerProcess) -> str:
        """SIGTERM, wait up to stop_timeout_s, then SIGKILL. Only ever signals our own child, by its PID."""
        if proc.exited:
            return "already exited"
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(signal.SIGTERM)
        with self._cond:
            if self._cond.wait_for(lambda: proc.exited, self.policy.stop_timeout_s):
                return "terminated (SIGTERM)"
        with contextlib.suppress(ProcessLookupError):
            proc.popen.kill()
        with self._cond:
            self._cond.wait_for(lambda: proc.exited, 10)
        return f"killed (SIGKILL after {self.policy.stop_timeout_s:g}s)"

    def _kill_current(self, reason: str) -> None:
        with self._cond:
            proc = self._proc
        if proc is not None and not proc.exited:
            how = self._terminate(proc)
            self._event("stopped", pid=proc.popen.pid, how=how, reason=reason)

    def _log_line(self, text: str) -> None:
        if self._stderr_log is not None:
            self._stderr_log.write(f"[hosttune {time.strftime('%Y-%m-%dT%H:%M:%S')}] {text}\n".encode())
