"""Block hot-plug while the daemon runs: kernel uevents -> debounce -> tune the disk, or mark it gone.

Why the kernel's uevents: pyudev's `Monitor.from_netlink(source="kernel")` listens on the kernel's own netlink
group, so it works without udevd (containers, minimal hosts) and does not wait for udev rules to run. Only block
whole-disk events are kept (partitions carry no queue settings).

Why debounce: one attach is a burst (a loop device: add, then change on attach; an NVMe: add for the controller's
namespace, change on partition scan). A disk is acted on once it has been quiet for QUIET_S, and what is done
follows the disk's state at that moment (inspect.block.disk_present), not the last event's action, so a burst
that ends with the disk gone never tunes it.

What is done runs as a host mutation of the daemon, like an API apply (its main loop, under the tuning lock):
a present disk gets the applied policy's block settings (tuning.hotplug.tune_disk: plan, journal, write, verify),
an absent one has its journal entries marked gone (tuning.hotplug.mark_gone). A failure is logged and the watch
goes on; a state lock held by a CLI apply is retried a few times. Only a live host is watched: uevents describe
the running kernel's /sys, not a fixture tree.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import pyudev

from agent.daemon.events import EventLog
from agent.errors import HostTuneError
from agent.gpu.nvml import Nvml
from agent.hostfs import HostPaths
from agent.inspect.block import disk_present
from agent.inspect.models import HostFacts
from agent.policy.loader import LoadedPolicy
from agent.tuning.hotplug import mark_gone, tune_disk
from agent.tuning.state import StateDir, StateLocked

log = logging.getLogger("hosttune.hotplug")

QUIET_S = 0.2
RETRY_S = 1.0
RETRIES = 5
ACTIONS = ("add", "change", "remove")
DISK_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_:+-]{0,63}")  # a kernel disk name: one path component, no dots


def disk_event(action: str | None, subsystem: str | None, devtype: str | None, name: str | None) -> str | None:
    """The disk a uevent is about, or None when it is not a block whole-disk add/change/remove."""
    if subsystem != "block" or devtype != "disk" or action not in ACTIONS or not name:
        return None
    return name if DISK_NAME_RE.fullmatch(name) else None


class Debouncer:
    """Names that must stay quiet for `quiet_s` before they are due; a new event pushes the deadline back.
    Not thread-safe: the watch holds its condition around every call."""

    def __init__(self, quiet_s: float = QUIET_S) -> None:
        self.quiet_s = quiet_s
        self._due: dict[str, float] = {}

    def note(self, name: str, now: float, delay: float | None = None) -> None:
        self._due[name] = now + (self.quiet_s if delay is None else delay)

    def next_due(self) -> float | None:
        return min(self._due.values(), default=None)

    def pop_due(self, now: float) -> list[str]:
        ready = sorted(name for name, at in self._due.items() if at <= now)
        for name in ready:
            del self._due[name]
        return ready


class BlockWatch:
    """Kernel block uevents in (pyudev's observer thread), settled disks out to `handle` (the watch's thread).

    `handle` may raise StateLocked to be called again RETRY_S later (at most RETRIES times); anything else it
    raises is logged."""

    def __init__(self, handle: Callable[[str], None], quiet_s: float = QUIET_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.handle = handle
        self.clock = clock
        self.debouncer = Debouncer(quiet_s)
        self._cond = threading.Condition()
        self._stopping = False
        self._retries: dict[str, int] = {}
        self._observer: pyudev.MonitorObserver | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen (raises ImportError without libudev, OSError without the netlink socket) and start acting."""
        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
        monitor.filter_by("block")
        self._observer = pyudev.MonitorObserver(monitor, callback=self.on_device, name="hotplug-uevents",
                                                daemon=True)
        self._thread = threading.Thread(target=self.run, name="hotplug", daemon=True)
        self._thread.start()
        self._observer.start()

    def on_device(self, device: pyudev.Device) -> None:
        try:
            name = disk_event(device.action, device.subsystem, device.device_type, device.sys_name)
        except Exception:  # an exception here would end pyudev's observer thread: no more events at all
            log.exception("hot-plug: unreadable uevent")
            return
        if name is not None:
            self.notice(name)

    def notice(self, name: str, delay: float | None = None) -> None:
        with self._cond:
            self.debouncer.note(name, self.clock(), delay)
            self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                ready: list[str] = []
                while not self._stopping:
                    now = self.clock()
                    ready = self.debouncer.pop_due(now)
                    if ready:
                        break
                    due = self.debouncer.next_due()
                    self._cond.wait(None if due is None else max(0.0, due - now))
                if self._stopping:
                    return
            for name in ready:
                self.act(name)

    def act(self, name: str) -> None:
        try:
            self.handle(name)
        except StateLocked as e:
            tries = self._retries.get(name, 0) + 1
            if tries > RETRIES:
                log.warning("hot-plug: %s not handled: %s", name, e)
                self._retries.pop(name, None)
                return
            self._retries[name] = tries
            self.notice(name, RETRY_S)
            return
        except HostTuneError as e:
            log.warning("hot-plug: %s: %s", name, e)
        except Exception:
            log.exception("hot-plug: %s failed", name)
        self._retries.pop(name, None)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening and acting. A handler waiting on the daemon's main loop is released by closing that loop
        (its call then fails), so call this after MainLoop.close() on the main thread."""
        if self._observer is not None:
            self._observer.stop()
            self._observer = None
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("hot-plug: the watch did not stop within %.0f s", timeout)
            self._thread = None


class TuningHost(Protocol):
    """What following disks needs from the daemon (its tuning service)."""

    @property
    def paths(self) -> HostPaths: ...
    @property
    def state_dir(self) -> Path: ...
    @property
    def applied_ref(self) -> str | None: ...
    @property
    def lock(self) -> AbstractContextManager[object]: ...
    @property
    def run_mutation(self) -> Callable[[Callable[[], Any]], Any]: ...
    def host_facts(self) -> HostFacts: ...
    def nvml(self) -> Nvml: ...
    def load_policy_ref(self, ref: str | Path, facts: HostFacts | None = None) -> LoadedPolicy: ...
    @property
    def events(self) -> EventLog: ...


class DiskFollower:
    """The daemon's answer to a settled disk: the applied policy's block settings, or its journal entries gone."""

    def __init__(self, host: TuningHost) -> None:
        self.host = host

    def _mutate(self, fn: Callable[[], Any]) -> Any:
        def locked() -> Any:
            with self.host.lock:
                return fn()
        return self.host.run_mutation(locked)

    def __call__(self, name: str) -> None:
        host = self.host
        ref = host.applied_ref
        if ref is None:
            log.debug("hot-plug: %s: no policy applied by this daemon", name)
            return
        state = StateDir(host.state_dir)
        if disk_present(host.paths, name):
            facts = host.host_facts()
            loaded = host.load_policy_ref(ref, facts)
            if not loaded.policy.block:  # nothing to give a disk: no lock taken, no transaction
                return
            nvml = host.nvml()
            result = self._mutate(lambda: tune_disk(loaded.policy, host.paths, state, name, facts=facts,
                                                    source=str(loaded.source), nvml=nvml))
            if result is not None:
                host.events.record("hotplug", device=name, writes=result.writes)
        else:
            gone = self._mutate(lambda: mark_gone(state, name, source=ref))
            if gone:
                host.events.record("hotplug", device=name, gone=len(gone))


def watch_block_devices(host: TuningHost) -> BlockWatch | None:
    """Start following disks on a live host; None (with the reason logged) where the uevents cannot be had."""
    if not host.paths.is_live:
        return None
    watch = BlockWatch(DiskFollower(host))
    try:
        watch.start()
    except (ImportError, OSError) as e:
        log.warning("block hot-plug is not followed (no kernel uevents here: %s)", e)
        watch.stop()
        return None
    return watch
