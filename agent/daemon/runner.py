"""`hosttune daemon`: the start sequence, the scheduler, signals, sd_notify and the watchdog.

Start order (each step reported as a STATUS= line): take the lifetime lock (one daemon per state dir, see
lifetime.py), check the token file (refuse a readable one), roll back an
interrupted transaction, apply the configured policy, start the worker and wait for it to be ready, start the
gateway, start the scheduler's jobs, start the controller (the worker stack's last part), start the API — and only
then READY=1, so `systemctl start` returning means the host is tuned and serving.

The main thread owns signals and the watchdog: handlers only set flags; the loop wakes, handles SIGHUP (reload:
config and policy, applying the difference) or SIGTERM/SIGINT (stop), and sends WATCHDOG=1 while the API thread
and the scheduler are alive. A main loop that stops (a hang) stops the pings and systemd restarts us.

Test switch (documented in docs/daemon.md): HOSTTUNE_TEST_HANG_AFTER_S=N makes the main loop hang N seconds after
READY — no more watchdog pings, no signal handling — so the real-systemd test can watch the watchdog kill and
restart the daemon.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from agent.api.tokenfile import ensure_token, read_metrics_token
from agent.config import DaemonSettings, load_settings
from agent.daemon.hotplug_watch import BlockWatch, watch_block_devices
from agent.daemon.lifetime import LifetimeLock
from agent.daemon.mainloop import MainLoop
from agent.daemon.services import Services
from agent.errors import HostTuneError
from agent.inspect.models import HostFacts
from agent.policy.loader import LoadedPolicy
from agent.sdnotify import Notifier, watchdog_interval_s
from agent.tuning.state import StateDir

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from agent.daemon.http import ServerThread

log = logging.getLogger("hosttune.daemon")

ENV_TEST_HANG = "HOSTTUNE_TEST_HANG_AFTER_S"
IDLE_WAKE_S = 30.0


def setup_logging(level: str) -> None:
    # Under systemd (JOURNAL_STREAM set) journald adds timestamps; elsewhere we do.
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") \
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # telemetry polls the worker every second


class Daemon:
    def __init__(self, settings: DaemonSettings, config_path: Path | None = None,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.notify = notifier or Notifier()
        self.services = Services(settings)
        self.scheduler: BackgroundScheduler | None = None  # imported when started
        self.api: ServerThread | None = None
        self.block_watch: BlockWatch | None = None
        self.mainloop = MainLoop()
        self.services.tuning.run_mutation = self.mainloop.call
        self._stop_requested: str | None = None
        self._reload_requested = False
        self._ready_at: float | None = None

    # -- status ---------------------------------------------------------------------------------------------------
    def status(self, text: str) -> None:
        log.info("%s", text)
        self.notify.status(text)

    # -- signals --------------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only flags here: the wakeup fd (mainloop) wakes the loop; taking a lock in a handler can deadlock.
        if signum == signal.SIGHUP:
            self._reload_requested = True
        else:
            self._stop_requested = signal.Signals(signum).name

    def install_signals(self) -> None:
        self.mainloop.install_wakeup()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    # -- start ----------------------------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        StateDir(s.state_dir).ensure()  # refuses a symlinked or foreign-owned state dir, fixes its mode
        api_token = ensure_token(s.token_path)  # refuse a group/world-readable token before touching the host
        read_metrics_token(s.api.metrics_token_file, api_token)  # likewise the scrape token; never the API token

        self.status("checking for an interrupted transaction")
        rolled = self.services.tuning.rollback_interrupted()
        if rolled:
            self.status(rolled)

        if s.policy:
            self.status(f"applying policy {s.policy}")
            facts = self.services.tuning.host_facts()  # once: the policy resolves, applies and places against it
            loaded = self.services.tuning.load_policy_ref(s.policy, facts)
            result = self.services.tuning.apply_loaded(loaded, facts)
            self.status(f"policy {loaded.policy.name} applied ({result.get('changed', 0)} changed)")
            self.start_worker(loaded, facts)
        self.start_gateway()
        self.start_scheduler()
        self.services.stack.start_controller()
        self.block_watch = watch_block_devices(self.services.tuning)  # hot-plugged disks get the policy (live host)
        self.start_api()

    def start_worker(self, loaded: LoadedPolicy, facts: HostFacts | None = None) -> None:
        spec = loaded.policy.worker
        if spec is None or not self.settings.worker.enabled:
            return
        self.status(f"starting worker ({spec.engine})")
        self.services.stack.start_worker(loaded, facts)
        self.status("worker ready")

    def start_gateway(self) -> None:
        if not self.settings.gateway.enabled or self.services.stack.supervisor is None:
            return
        self.status("starting gateway")
        self.services.stack.start_gateway()

    def start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        s = self.settings
        sched = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True, "max_instances": 1,
                                                               "misfire_grace_time": 30})
        self.services.register_jobs(sched)
        if s.drift_check_s > 0:
            sched.add_job(self._drift_job, "interval", seconds=s.drift_check_s, id="drift")
        sched.start()
        self.scheduler = sched

    def _drift_job(self) -> None:
        try:
            report = self.services.tuning.drift_check(self.settings.reapply_on_drift)
        except HostTuneError as e:
            log.warning("drift check failed: %s", e)
            return
        if report.get("drifted"):
            action = "re-applied" if self.settings.reapply_on_drift else "reported"
            self.notify.status(f"drift: {report['drifted']} tunables drifted ({action})")

    def start_api(self) -> None:
        from agent.api.app import create_app
        from agent.daemon.http import ServerThread, bind_tcp, bind_unix

        a = self.settings.api
        sock = bind_unix(a.unix_socket) if a.unix_socket else bind_tcp(a.host, a.port)
        app = create_app(self.settings, self.services)
        self.api = ServerThread(app, sock, "api", log_level=self.settings.log_level,
                                limits=a.server_limits(None if a.unix_socket else a.host))
        self.api.start()

    def ready_text(self) -> str:
        parts = [f"policy {self.settings.policy}" if self.settings.policy else "no policy"]
        if self.api is not None:
            parts.append(f"API {self.api.url}")
        if self.services.stack.gateway is not None:
            parts.append(f"gateway {self.services.stack.gateway.url}")
        if self.services.stack.supervisor is not None:
            parts.append(f"worker {self.services.worker().get('state')}")
        return "ready: " + ", ".join(parts)

    # -- run loop -------------------------------------------------------------------------------------------------
    def healthy(self) -> bool:
        api_ok = self.api is not None and self.api.alive
        sched_ok = self.scheduler is not None and self.scheduler.running
        return api_ok and sched_ok

    def loop(self) -> str:
        """Serve until a stop signal; returns the signal's name."""
        interval = watchdog_interval_s()
        hang_after = float(os.environ.get(ENV_TEST_HANG, "0") or 0)
        while self._stop_requested is None:
            if hang_after and self._ready_at is not None and time.monotonic() - self._ready_at >= hang_after:
                self._hang()
            if interval is not None and self.healthy():
                self.notify.watchdog()
            elif interval is not None:
                log.error("API or scheduler died: withholding the watchdog ping")
            timeout = min(interval or IDLE_WAKE_S, IDLE_WAKE_S)
            if hang_after and self._ready_at is not None:
                timeout = max(0.05, min(timeout, self._ready_at + hang_after - time.monotonic()))
            self.mainloop.run_once(timeout)
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
        return self._stop_requested

    def _hang(self) -> None:
        log.warning("%s: simulating a hung main loop (no watchdog pings, signals ignored)", ENV_TEST_HANG)
        self.notify.status("test: hanging (watchdog pings stopped)")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        while True:
            time.sleep(3600)

    # -- reload ---------------------------------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: re-read the config and the policy; apply what changed, restart the worker only if its spec did."""
        self.notify.reloading()
        log.info("reloading configuration")
        try:
            new = load_settings(self.config_path)
        except HostTuneError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            self.notify.send(READY=1, STATUS=f"reload failed (kept running config): {e}")
            return
        restart_needed = [name for name in ("api", "gateway", "state_dir", "token_file", "audit_log",
                                            "procfs", "sysfs", "rootfs")
                          if getattr(new, name) != getattr(self.settings, name)]
        if restart_needed:
            log.warning("changed settings that need a restart to take effect: %s", ", ".join(restart_needed))
        try:
            summary = self.services.reload(new)
        except HostTuneError as e:
            log.error("reload: policy not applied: %s", e)
            self.notify.send(READY=1, STATUS=f"reload failed (kept running policy): {e}")
            return
        old = self.settings
        self.settings = new.model_copy(update={n: getattr(old, n) for n in restart_needed})
        self.services.settings = self.settings
        self._reschedule(old)
        self.notify.send(READY=1, STATUS=f"reloaded: {summary}; " + self.ready_text())

    def _reschedule(self, old: DaemonSettings) -> None:
        if self.scheduler is None:
            return
        s = self.settings
        if s.drift_check_s != old.drift_check_s:
            if self.scheduler.get_job("drift"):
                self.scheduler.remove_job("drift")
            if s.drift_check_s > 0:
                self.scheduler.add_job(self._drift_job, "interval", seconds=s.drift_check_s, id="drift")
        self.services.reschedule(self.scheduler, old)

    # -- stop -----------------------------------------------------------------------------------------------------
    def stop(self, why: str) -> None:
        self.notify.stopping(f"stopping ({why})")
        log.info("stopping (%s)", why)
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.mainloop.close()  # requests still waiting for a host mutation get an error, not a hang
        if self.block_watch is not None:  # after close(): a hot-plug waiting on the loop is released
            self.block_watch.stop()
        if self.api is not None:
            self.api.stop()
        self.services.stack.stop()
        if self.settings.revert_on_stop:
            self.notify.status("reverting host tuning (revert_on_stop)")
            try:
                self.services.revert()
            except HostTuneError as e:
                log.error("revert on stop failed: %s", e)
        else:
            log.info("leaving host tuning in place (revert_on_stop: false)")

    def run(self) -> int:
        # First of all, and outside the start-failed path below (whose stop() could revert or unlink what the
        # running daemon owns): a second daemon on this state dir leaves with the holder's PID and nothing done.
        lifetime = LifetimeLock(self.settings.state_dir)
        lifetime.acquire()
        try:
            return self._run()
        finally:
            lifetime.release()

    def _run(self) -> int:
        self.install_signals()
        try:
            self.start()
        except BaseException:
            self.notify.status("start failed")
            self.stop("start failed")
            raise
        if self._stop_requested is None:
            self._ready_at = time.monotonic()
            self.notify.ready(self.ready_text())
            log.info("%s", self.ready_text())
            print(self.ready_text(), f"(token: {self.settings.token_path})", file=sys.stderr, flush=True)
        why = self.loop()
        self.stop(why)
        return 0


def run_daemon(config_path: Path | None) -> int:
    settings = load_settings(config_path)
    setup_logging(settings.log_level)
    return Daemon(settings, config_path).run()
