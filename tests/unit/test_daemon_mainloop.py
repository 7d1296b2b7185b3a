"""The daemon's main-thread loop: work handed over from other threads runs on the main thread (where the engine can
install its SIGTERM rollback handler), results and exceptions come back, a signal wakes the loop at once."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from agent.daemon.mainloop import MainLoop


@pytest.fixture
def loop() -> Iterator[MainLoop]:
    ml = MainLoop()
    yield ml
    ml.close()


def run_from_thread(loop: MainLoop, fn: object) -> dict[str, object]:
    box: dict[str, object] = {}

    def worker() -> None:
        try:
            box["result"] = loop.call(fn)  # type: ignore[arg-type]
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=worker)
    t.start()
    while t.is_alive():
        if loop.closed:
            time.sleep(0.01)
        else:
            loop.run_once(0.05)
    t.join()
    return box


def test_work_runs_on_the_main_thread_and_returns(loop: MainLoop) -> None:
    def job() -> str:
        # What the engine does during a transaction: only legal on the main thread.
        previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, previous)
        return threading.current_thread().name

    assert run_from_thread(loop, job) == {"result": threading.main_thread().name}


def test_exceptions_reach_the_caller(loop: MainLoop) -> None:
    def job() -> None:
        raise ValueError("boom")

    box = run_from_thread(loop, job)
    assert isinstance(box["error"], ValueError) and str(box["error"]) == "boom"


def test_call_on_the_main_thread_runs_inline(loop: MainLoop) -> None:
    assert loop.call(lambda: 41 + 1) == 42


def test_a_signal_wakes_the_loop_at_once(loop: MainLoop) -> None:
    got: list[int] = []
    old_handler = signal.signal(signal.SIGHUP, lambda signum, frame: got.append(signum))
    loop.install_wakeup()
    try:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGHUP)).start()
        t0 = time.monotonic()
        loop.run_once(10)
        assert time.monotonic() - t0 < 5 and got == [signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, old_handler)


def test_close_fails_waiting_and_new_work(loop: MainLoop) -> None:
    box: dict[str, object] = {}

    def worker() -> None:
        try:
            loop.call(lambda: None)
        except RuntimeError as e:
            box["error"] = e

    t = threading.Thread(target=worker)
    t.start()
    time.sleep(0.2)  # queued, never run: the main thread is "stopping"
    loop.close()
    t.join(5)
    assert "stopping" in str(box["error"])
    # Work handed over after close is refused at once rather than left waiting forever.
    late = run_from_thread(loop, lambda: None)
    assert isinstance(late["error"], RuntimeError) and "stopping" in str(late["error"])
