"""Whose value a journaled target holds now: hosttune's, someone else's (drift since hosttune set it), or nobody's
(the target is gone from this host).

Why: an original is only ours to write back while the target still holds what hosttune put there. When an admin
or another tool changed it since, revert and the restore of a target a new policy drops leave it alone and say
so (`hosttune revert --force` writes the original anyway). When the target itself vanished — a block device
renamed across a reboot, a hot-unplugged disk — there is nothing to restore: the record is dropped with a warning
instead of blocking every later apply, revert and daemon start.

What "ours" means: at every commit the file's content is recorded in its original (Record.expected_raw). Records
journaled as a side effect (nr_requests reset by a scheduler switch) are not checked: hosttune's own restores
move them again. Files hosttune created (a 60-hosttune-*.rules file: no original) are hosttune's whatever their
content, so revert removes them even when edited. Non-file (NVML) records are not checked.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel

from agent.tunable import formats
from agent.tunable.record import Record
from agent.tuning import hostfile
from agent.tuning.journal import Journal, Txn

log = logging.getLogger("hosttune.engine")


class Drift(BaseModel):
    """A target someone else changed after hosttune set it: left as is."""

    key: str
    current: str | None
    expected: str | None
    original: str | None


def is_gone(record: Record) -> bool:
    """The target hosttune changed no longer exists on this host (a file record whose original existed)."""
    return record.path is not None and record.original_raw is not None and hostfile.read_raw(Path(record.path)) is None


def drift_of(record: Record) -> Drift | None:
    """A Drift when the target now holds neither the value hosttune last committed nor the original."""
    if record.path is None or record.original_raw is None or record.expected_raw is None \
            or record.side_effect_of is not None:
        return None
    now = hostfile.read_raw(Path(record.path))
    if now is None or now == record.original_raw:
        return None
    fmt = record.format
    if formats.parse(fmt, now) == formats.parse(fmt, record.expected_raw):
        return None
    return Drift(key=record.key, current=formats.parse(fmt, now), expected=formats.parse(fmt, record.expected_raw),
                 original=formats.parse(fmt, record.original_raw))


def forget_gone(journal: Journal, record: Record, during: str) -> None:
    log.warning("%s: gone from this host (%s no longer exists); dropped from the journal during %s",
                record.key, record.path, during)
    journal.drop_original(record.key)


def remember_committed(journal: Journal, txn: Txn) -> None:
    """Record what each target this transaction wrote holds now, so a later revert can tell drift."""
    for write in txn.writes:
        record = journal.original(write.key)
        if record is not None and record.path is not None:
            record.expected_raw = hostfile.read_raw(Path(record.path))
