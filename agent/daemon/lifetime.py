"""The daemon's lifetime lock: one daemon per state directory, decided before the daemon touches anything.

Why: a second daemon on the same host would apply its policy, start a worker and (with a unix socket) unlink the
first one's socket before failing on its port. So `hosttune daemon` first takes an exclusive flock on
STATE_DIR/daemon.lock and keeps it until the process ends (the kernel drops it on any exit, kill -9 included).
The file holds the holder's PID so the refusal can name it; it is opened without truncation so a refused daemon
never erases the holder's PID. Close-on-exec: a worker the daemon starts does not inherit the lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from agent.errors import HostError
from agent.tuning.state import StateDir

LOCK_NAME = "daemon.lock"


class DaemonRunning(HostError):
    """Another hosttune daemon holds the lifetime lock of this state directory."""


class LifetimeLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise DaemonRunning naming the holder's PID. Writes only our PID, once held."""
        StateDir(self.path.parent).ensure()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DaemonRunning(f"another hosttune daemon (pid {holder}) is running with this state directory; "
                                f"stop it first (nothing was changed)", path=self.path) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
