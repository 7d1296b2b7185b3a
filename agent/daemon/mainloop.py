"""The daemon's main-thread loop: it runs every host mutation, and wakes for signals without racing them.

Why mutations run on the main thread: the tuning engine turns SIGTERM into a rollback during a transaction by
installing a signal handler, which Python allows only on the main thread; and one thread doing all writes
(API apply/revert, the drift job's re-apply, a SIGHUP reload) serializes them without further locking.
API routes and scheduler jobs hand a callable to `call()` and wait for its result (or exception).

Why a self-pipe: a signal handler must not take locks (an Event.set() or Queue.put() in a handler can deadlock
against the interrupted main thread holding the same lock). Handlers only set flags; `signal.set_wakeup_fd`
makes the C-level handler write a byte to a pipe the loop selects on, and submissions write to a second pipe.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import selectors
import signal
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class MainLoop:
    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], concurrent.futures.Future[object]]] = \
            queue.SimpleQueue()
        self._sig_r, self._sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._job_r, self._job_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sig_r, selectors.EVENT_READ)
        self._selector.register(self._job_r, selectors.EVENT_READ)
        self._old_wakeup_fd: int | None = None
        self.closed = False

    def install_wakeup(self) -> None:
        """Route signal wake-ups to our pipe (main thread only; call before installing handlers)."""
        self._old_wakeup_fd = signal.set_wakeup_fd(self._sig_w, warn_on_full_buffer=False)

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run fn on the main thread and return its result; runs inline when already there (start, reload)."""
        if threading.current_thread() is threading.main_thread():
            return fn()
        if self.closed:
            raise RuntimeError("the daemon is stopping")
        future: concurrent.futures.Future[object] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        with contextlib.suppress(BlockingIOError):
            os.write(self._job_w, b"j")
        return future.result(timeout)  # type: ignore[return-value]

    def run_once(self, timeout: float | None) -> None:
        """Wait up to `timeout` for a signal or a job, then run the queued jobs."""
        for key, _ in self._selector.select(timeout):
            with contextlib.suppress(BlockingIOError):
                while os.read(key.fd, 512):
                    pass
        self.run_jobs()

    def run_jobs(self) -> None:
        while True:
            try:
                fn, future = self._jobs.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as e:  # handed to the waiting thread, which re-raises it
                future.set_exception(e)

    def close(self) -> None:
        """Refuse new jobs, fail the queued ones, restore the wakeup fd, close the pipes."""
        self.closed = True
        while True:
            try:
                _, future = self._jobs.get_nowait()
            except queue.Empty:
                break
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError("the daemon is stopping"))
        if self._old_wakeup_fd is not None:
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(self._old_wakeup_fd)
        self._selector.close()
        for fd in (self._sig_r, self._sig_w, self._job_r, self._job_w):
            with contextlib.suppress(OSError):
                os.close(fd)
