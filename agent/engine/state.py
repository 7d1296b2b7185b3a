"""The state directory (--state-dir / HOSTTUNE_STATE_DIR, default /var/lib/hosttune): the journal plus a lock.

Created 0700: the journal names host files and holds their original values. The lock (flock on state_dir/lock)
keeps two writers — a CLI apply and the daemon, say — from interleaving transactions; readers (verify, status,
plan) do not take it: they read one atomically replaced file.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.engine.journal import JOURNAL_NAME, Journal
from agent.errors import HostError


class StateLocked(HostError):
    """Another hosttune process (apply, revert, the daemon) holds the state lock."""


LOCK_NAME = "lock"


class StateDir:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def journal_path(self) -> Path:
        return self.path / JOURNAL_NAME

    def ensure(self) -> StateDir:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)
        except OSError as e:
            raise HostError(f"cannot create the state directory: {e.strerror}", path=self.path) from e
        return self

    def journal(self) -> Journal:
        """The journal for reading (an absent state dir reads as an empty journal)."""
        return Journal(self.journal_path)

    @contextmanager
    def locked(self) -> Iterator[Journal]:
        """Exclusive access for a writing command; yields the journal loaded under the lock."""
        self.ensure()
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateLocked("another hosttune process holds the state lock (apply or revert running)",
                                path=self.path / LOCK_NAME) from None
            yield Journal(self.journal_path)
        finally:
            os.close(fd)
