"""One spawned worker process and its pipes: its stdout and stderr read line by line into the rotating logs (the
last stderr lines kept for the crash reason), and a waiter that marks it exited — under the supervisor's
condition, so the supervising thread wakes on an exit instead of polling for it."""

from __future__ import annotations

import collections
import subprocess
import threading
from dataclasses import dataclass
from typing import IO

from agent.worker.engines import Launch
from agent.worker.logs import RotatingLog

STDERR_TAIL_LINES = 40
# The longest line read from the worker's stdout/stderr at once: a worker that writes without newlines must not
# make the (root) supervisor buffer an unbounded line; a longer line is logged in pieces.
PIPE_LINE_MAX = 64 * 1024


@dataclass
class WorkerProcess:
    popen: subprocess.Popen[bytes]
    launch: Launch
    spawned: float
    oom_kills_before: int | None
    exited: bool = False


def start_pipe_threads(proc: WorkerProcess, cond: threading.Condition, stdout_log: RotatingLog | None,
                       stderr_log: RotatingLog | None, stderr_tail: collections.deque[str]) -> None:
    """Pump both pipes in threads; set `proc.exited` (and notify `cond`) once the process ended and its pipes
    drained."""
    popen = proc.popen
    assert popen.stdout is not None and popen.stderr is not None
    pumps = [threading.Thread(target=pump, args=(popen.stdout, stdout_log, None, cond),
                              name=f"worker-{popen.pid}-stdout", daemon=True),
             threading.Thread(target=pump, args=(popen.stderr, stderr_log, stderr_tail, cond),
                              name=f"worker-{popen.pid}-stderr", daemon=True)]
    for t in pumps:
        t.start()

    def waiter() -> None:
        popen.wait()
        for t in pumps:
            t.join(5)  # let the pipes drain so the crash reason sees the last stderr lines
        with cond:
            proc.exited = True
            cond.notify_all()

    threading.Thread(target=waiter, name=f"worker-{popen.pid}-wait", daemon=True).start()


def pump(pipe: IO[bytes], sink: RotatingLog | None, tail: collections.deque[str] | None,
         cond: threading.Condition) -> None:
    """Copy `pipe` to `sink` in lines of at most PIPE_LINE_MAX bytes; keep each line in `tail` (under `cond`)."""
    try:
        for raw in iter(lambda: pipe.readline(PIPE_LINE_MAX), b""):
            if sink is not None:
                sink.write(raw)
            if tail is not None:
                with cond:
                    tail.append(raw.decode(errors="replace").rstrip())
    finally:
        pipe.close()
