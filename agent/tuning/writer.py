"""The ONE place hosttune writes to the host. Every write follows the same steps:

  1. read the target's original raw bytes
  2. journal {tuner, target, path, original_raw, restore_value, desired} (atomic write + fsync) — BEFORE writing
  3. write the value
  4. read it back and check it (a short hugepage pool, a clamped sysctl: an error, never a silent success)
  5. count the write; HOSTTUNE_CRASH_AFTER_WRITES=N makes the process SIGKILL itself right after its N-th host
     write, which is how the crash tests prove that every step above survives kill -9; test-only too,
     HOSTTUNE_TEST_STALL_AT_WRITES=N[,M...] with HOSTTUNE_TEST_STALL_DIR=DIR holds the writer after its N-th write
     (it creates DIR/stalled-N and waits for DIR/release-N), so a test can signal a process mid-transaction

Rollback and revert go through here too (restore_file / restore_custom) and count as host writes, so a crash in
the middle of a revert is testable the same way.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import HostError, TargetGone, WriteFailed
from agent.tunable import formats
from agent.tunable.formats import Format
from agent.tunable.record import Record
from agent.tunable.writer import Check, RestoreValue
from agent.tuning import hostfile
from agent.tuning.journal import Journal

ENV_CRASH_AFTER = "HOSTTUNE_CRASH_AFTER_WRITES"
ENV_STALL_AT = "HOSTTUNE_TEST_STALL_AT_WRITES"
ENV_STALL_DIR = "HOSTTUNE_TEST_STALL_DIR"
STALL_MAX_S = 120.0

def crash_after_from_env(env: dict[str, str] | None = None) -> int | None:
    value = (env if env is not None else os.environ).get(ENV_CRASH_AFTER, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise HostError(f"{ENV_CRASH_AFTER} must be a positive integer, not {value!r}") from None
    return n if n > 0 else None


def _plain_check(fmt: Format, value: str) -> Check:
    """Default read-back check: the file now parses to the value written."""
    def check(raw: str | None) -> str | None:
        now = formats.parse(fmt, raw)
        if now is not None and formats.parse(fmt, formats.render(fmt, raw, value)) == now:
            return None
        return f"wrote {value!r}, reads back {now!r}"
    return check


def _stall_if_asked(n: int) -> None:
    """The test-only hold point (see the module docstring); a no-op unless both variables are set."""
    where = os.environ.get(ENV_STALL_DIR)
    at = os.environ.get(ENV_STALL_AT, "")
    if not where or str(n) not in at.split(","):
        return
    (Path(where) / f"stalled-{n}").touch()
    release = Path(where) / f"release-{n}"
    deadline = time.monotonic() + STALL_MAX_S
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


class HostWriter:
    """Journals, writes, reads back and counts. One per command run. Implements agent.tunable.writer.Writer."""

    def __init__(self, journal: Journal, *, crash_after: int | None = None) -> None:
        self.journal = journal
        self.crash_after = crash_after
        self.writes = 0

    # -- journaling -----------------------------------------------------------------------------------------
    def _journal(self, record: Record) -> None:
        """Remember the first original of the target, and this txn's before-value, durably."""
        txn = self.journal.open_txn
        if txn is None:
            raise RuntimeError("host write outside a transaction")
        if self.journal.original(record.key) is None:
            self.journal.data.originals.append(record)
            txn.new_keys.append(record.key)
        if txn.kind == "apply" and not any(w.key == record.key for w in txn.writes):
            txn.writes.append(record)
        self.journal.save()

    def _count(self) -> None:
        self.writes += 1
        if self.crash_after is not None and self.writes >= self.crash_after:
            os.kill(os.getpid(), signal.SIGKILL)
        _stall_if_asked(self.writes)

    def _record(self, tuner: str, target: str, path: Path, fmt: Format, desired: str | None,
                restore_value: RestoreValue, side_effect_of: str | None = None) -> Record:
        original = hostfile.read_raw(path)
        return Record(tuner=tuner, target=target, path=str(path), original_raw=original,
                      restore_value=None if original is None else restore_value(original), desired=desired,
                      format=fmt, side_effect_of=side_effect_of)

    # -- file writes ----------------------------------------------------------------------------------------
    def write_file(self, *, tuner: str, target: str, path: Path, value: str, fmt: Format = "scalar",
                   desired: str | None = None, restore_value: RestoreValue = str.strip,
                   check: Check | None = None, create: bool = False) -> str | None:
        """Journal, write `value` to `path`, read back and check. Returns the raw value read back."""
        record = self._record(tuner, target, path, fmt, desired if desired is not None else value, restore_value)
        if record.original_raw is None and not create:
            raise WriteFailed(target, "does not exist on this host", path=str(path))
        self._journal(record)
        self._put(target, path, fmt, record.original_raw, value, create=create)
        raw = hostfile.read_raw(path)
        problem = (check or _plain_check(fmt, value))(raw)
        if problem is not None:
            raise WriteFailed(target, problem, path=str(path))
        return raw

    def protect_file(self, *, tuner: str, target: str, path: Path, fmt: Format = "scalar",
                     restore_value: RestoreValue = str.strip, side_effect_of: str | None = None) -> None:
        """Journal a file that the next write changes as a side effect (a scheduler switch resets nr_requests),
        so rollback and revert put it back too, after the write that disturbed it is undone."""
        record = self._record(tuner, target, path, fmt, None, restore_value, side_effect_of)
        if record.original_raw is not None:
            self._journal(record)

    def _put(self, target: str, path: Path, fmt: Format, current_raw: str | None, value: str, *,
             create: bool = False) -> None:
        live = hostfile.is_kernel_file(path)
        data = value if live else formats.render(fmt, current_raw, value)
        try:
            hostfile.write_raw(path, data, create=create)
        except OSError as e:
            raise WriteFailed(target, f"cannot write {value!r}: {e.strerror or e}", path=str(path)) from e
        finally:
            self._count()

    def remember_current(self, record: Record) -> None:
        """Before an apply puts back a stale original, journal what the target holds now, so that rolling the
        transaction back returns it to the earlier policy's value."""
        if record.path is None:
            raise RuntimeError(f"{record.key}: not a file record")
        txn = self.journal.open_txn
        if txn is None or txn.kind != "apply":
            raise RuntimeError("remember_current outside an apply transaction")
        now = hostfile.read_raw(Path(record.path))
        if now is None or any(w.key == record.key for w in txn.writes):
            return
        txn.writes.append(record.model_copy(update={
            "original_raw": now, "restore_value": formats.restore_value(record.format, now)}))
        self.journal.save()

    def restore_file(self, record: Record) -> bool:
        """Write a record's original back (or remove a file hosttune created). Returns False when the host
        already held the original (no write). Raises WriteFailed when it does not read back byte for byte."""
        if record.path is None:
            raise RuntimeError(f"{record.key}: not a file record")
        path = Path(record.path)
        now = hostfile.read_raw(path)
        if now == record.original_raw:
            return False
        if now is None:
            raise TargetGone(f"{record.target}: gone from this host", path=str(path))
        if record.original_raw is None:
            hostfile.remove(path)
            self._count()
            return True
        live = hostfile.is_kernel_file(path)
        data = (record.restore_value or record.original_raw) if live else record.original_raw
        try:
            hostfile.write_raw(path, data)
        except OSError as e:
            raise WriteFailed(record.target, f"cannot restore {data.strip()!r}: {e.strerror or e}",
                              path=str(path)) from e
        finally:
            self._count()
        back = hostfile.read_raw(path)
        if back != record.original_raw:
            raise WriteFailed(record.target, f"restored {data.strip()!r} but it reads back {back!r}, "
                                             f"not the original {record.original_raw!r}", path=str(path))
        return True

    # -- non-file tunables (NVML) -----------------------------------------------------------------------------
    def write_custom(self, *, tuner: str, target: str, original: str | None, desired: str | None,
                     do: Callable[[], None], extra: dict[str, Any] | None = None) -> None:
        """Journal a non-file tunable (its original as text plus any `extra` restore data), then run `do`.
        `do` must raise on failure and should read back and raise WriteFailed when the value did not stick."""
        record = Record(tuner=tuner, target=target, path=None, original_raw=original, restore_value=original,
                        desired=desired, extra=extra or {})
        self._journal(record)
        try:
            do()
        finally:
            self._count()

    def restore_custom(self, record: Record, do: Callable[[], None]) -> None:
        """Run a tuner's restore action for a non-file record, counted like any host write."""
        try:
            do()
        finally:
            self._count()
