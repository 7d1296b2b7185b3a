"""The state directory (--state-dir / HOSTTUNE_STATE_DIR, default /var/lib/hosttune): the journal plus a lock.

Created 0700 (an existing one is fixed to 0700): the journal names host files and holds their original values.
A state dir that is a symlink, not a directory, or owned by another uid than ours is refused: whoever controls
it could swap the journal and have `revert` write their values as root, or read the token.
The lock (flock on state_dir/lock) keeps two writers — a CLI apply and the daemon, say — from interleaving
transactions; readers (verify, status, plan) do not take it: they read one atomically replaced file.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.errors import HostError, InputError
from agent.tuning.journal import JOURNAL_NAME, Journal


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
        ensure_private_dir(self.path, "state directory")
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


def ensure_private_dir(path: Path, what: str) -> None:
    """Create `path` 0700 (parents as needed) or check an existing one; refuse a symlink, a non-directory or a
    directory owned by another uid, and fix the mode of an existing one to 0700 through an O_NOFOLLOW fd (no
    chmod through a symlink swapped in after the check)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # a symlink to nowhere or a file: told below
    except OSError as e:
        raise HostError(f"cannot create the {what}: {e.strerror}", path=path) from e
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if path.is_symlink():
            raise InputError(f"the {what} is a symlink; refusing it (use the real directory)", path=path) from None
        raise InputError(f"the {what} is not a directory we can open: {e.strerror}", path=path) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise InputError(f"the {what} is owned by uid {st.st_uid}, not by us (uid {os.geteuid()}); refusing "
                             "it: another user could swap its files", path=path)
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    except OSError as e:
        raise HostError(f"cannot set the {what} to mode 0700: {e.strerror}", path=path) from e
    finally:
        os.close(fd)
