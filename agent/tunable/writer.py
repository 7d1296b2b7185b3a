"""Writer: the host-write interface a tuner is handed by the engine.

agent.tuning.writer.HostWriter implements it (journal first, write, read back, count); a tuner depends only on
this interface, so the tuners never import the engine. The failures a write can raise (WriteFailed, TargetGone)
live in agent.errors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agent.tunable.formats import Format
from agent.tunable.record import Record

Check = Callable[[str | None], str | None]
"""Read-back check: None when the raw value read back is what was asked for, else what went wrong."""
RestoreValue = Callable[[str], str]
"""What to write to a live kernel file to bring back an original raw value."""


class OpenTxn(Protocol):
    @property
    def kind(self) -> str:
        """"apply" or "revert"."""


class TxnSource(Protocol):
    @property
    def open_txn(self) -> OpenTxn | None:
        """The transaction in progress, if any (a tuner may act differently in a rollback than in a revert)."""


class Writer(Protocol):
    @property
    def journal(self) -> TxnSource: ...

    def write_file(self, *, tuner: str, target: str, path: Path, value: str, fmt: Format = "scalar",
                   desired: str | None = None, restore_value: RestoreValue = str.strip,
                   check: Check | None = None, create: bool = False) -> str | None:
        """Journal, write `value` to `path`, read back and check. Returns the raw value read back."""

    def protect_file(self, *, tuner: str, target: str, path: Path, fmt: Format = "scalar",
                     restore_value: RestoreValue = str.strip, side_effect_of: str | None = None) -> None:
        """Journal a file that the next write changes as a side effect, so rollback and revert put it back too."""

    def restore_file(self, record: Record) -> bool:
        """Write a record's original back. False when the host already held it."""

    def write_custom(self, *, tuner: str, target: str, original: str | None, desired: str | None,
                     do: Callable[[], None], extra: dict[str, Any] | None = None) -> None:
        """Journal a non-file tunable (NVML), then run `do`."""

    def restore_custom(self, record: Record, do: Callable[[], None]) -> None:
        """Run a tuner's restore action for a non-file record, counted like any host write."""
