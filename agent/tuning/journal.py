"""The on-disk journal: the single source of truth for what hosttune changed and how to undo it.

One JSON file (state_dir/journal.json), rewritten whole with agent.fsio.atomic_write (temp file, fsync, rename,
fsync dir) before every host write, so after SIGKILL, a crash or a power cut it always holds either the state
before or after one step — never half of one. It keeps:

  originals  the first original of every target hosttune ever wrote, in first-write order. Only the first is
             kept across transactions, so revert returns the host byte for byte to its pre-hosttune state.
  txn        the current or last transaction: kind (apply|revert), status (open|committed|rolled_back|failed)
             and, for apply, every write it made with the value that target held just before it (`writes`).
             An `open` txn found at start means the last process died mid-way: it is rolled back first.
  applied    the policy last committed and its changes (for verify and status). Committing the txn and
             recording `applied` is one atomic rewrite, so the two cannot disagree.
  staged     the worker's weights staged in a hugetlbfs mount (agent/tuning/weights.py): recorded before the
             mount and the file are made, dropped once both are gone, so a crash leaves a record to clean up by.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from agent.errors import InputError
from agent.fsio import atomic_write, load_json
from agent.tunable.change import Change
from agent.tunable.record import Record

JOURNAL_VERSION = 1
JOURNAL_NAME = "journal.json"
HISTORY_KEEP = 20


TxnKind = Literal["apply", "revert"]
TxnStatus = Literal["open", "committed", "rolled_back", "failed"]


class Txn(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    kind: TxnKind
    status: TxnStatus = "open"
    policy: str | None = None
    started: float = Field(default_factory=time.time)
    finished: float | None = None
    writes: list[Record] = Field(default_factory=list, description="apply: value before each write, in order")
    new_keys: list[str] = Field(default_factory=list, description="targets whose first original this txn added")
    error: str | None = None


class Applied(BaseModel):
    policy: str
    source: str | None = None
    at: float = Field(default_factory=time.time)
    txn: str
    changes: list[Change] = Field(default_factory=list)
    trials: list[str] = Field(default_factory=list, description=(
        "the controller's OS trials kept into this policy (agent/tuning/trial.py): not tried again"))

    def updated(self, changes: list[Change], txn: str) -> Applied:
        """The same policy with `changes` in place of its entries for the same targets (new ones appended): a
        hot-plugged disk tuned, or marked gone, under the applied policy without re-planning the rest."""
        new = {c.key: c for c in changes}
        kept = [new.pop(c.key, c) for c in self.changes]
        return self.model_copy(update={"changes": kept + list(new.values()), "txn": txn})


class HistoryEntry(BaseModel):
    id: str
    kind: TxnKind
    status: TxnStatus
    policy: str | None = None
    started: float
    finished: float | None = None
    writes: int = 0
    error: str | None = None


class StagedWeights(BaseModel):
    """A copy of the model in a hugetlbfs mount hosttune made: the mount point, the file, and what it copies."""

    source: str
    mount: str
    file: str
    size_bytes: int = Field(description="the GGUF's own size (the staged file is padded to whole pages)")
    pages: int = Field(description="2 MiB pages the staged file holds")
    at: float = Field(default_factory=time.time)


class JournalData(BaseModel):
    version: int = JOURNAL_VERSION
    originals: list[Record] = Field(default_factory=list)
    txn: Txn | None = None
    applied: Applied | None = None
    staged: StagedWeights | None = None
    history: list[HistoryEntry] = Field(default_factory=list)


class Journal:
    """Load/modify/save the journal file. Every `save` is atomic and durable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = self._load()

    def _load(self) -> JournalData:
        raw = load_json(self.path)
        if raw is None:
            return JournalData()
        try:
            data = JournalData.model_validate(raw)
        except ValidationError as e:
            raise InputError(f"journal is not readable by this hosttune: {e.errors()[0]['msg']}",
                             path=self.path) from None
        if data.version != JOURNAL_VERSION:
            raise InputError(f"journal version {data.version} is not {JOURNAL_VERSION}", path=self.path)
        return data

    def save(self) -> None:
        atomic_write(self.path, self.data.model_dump_json(indent=1) + "\n")

    # -- originals ----------------------------------------------------------------------------------------
    def original(self, key: str) -> Record | None:
        return next((r for r in self.data.originals if r.key == key), None)

    def drop_original(self, key: str) -> None:
        self.data.originals = [r for r in self.data.originals if r.key != key]

    # -- transactions -------------------------------------------------------------------------------------
    @property
    def open_txn(self) -> Txn | None:
        txn = self.data.txn
        return txn if txn is not None and txn.status == "open" else None

    def begin(self, kind: TxnKind, policy: str | None = None) -> Txn:
        if self.open_txn is not None:
            raise RuntimeError("begin() with a transaction still open")
        self.data.txn = Txn(kind=kind, policy=policy)
        self.save()
        return self.data.txn

    def finish(self, status: TxnStatus, *, applied: Applied | Literal["keep"] | None = "keep",
               error: str | None = None) -> None:
        txn = self.data.txn
        if txn is None:
            raise RuntimeError("finish() without a transaction")
        txn.status = status
        txn.finished = time.time()
        txn.error = error
        if applied != "keep":
            self.data.applied = applied
        self.data.history.append(HistoryEntry(
            id=txn.id, kind=txn.kind, status=status, policy=txn.policy, started=txn.started,
            finished=txn.finished, writes=len(txn.writes), error=error))
        self.data.history = self.data.history[-HISTORY_KEEP:]
        self.save()
