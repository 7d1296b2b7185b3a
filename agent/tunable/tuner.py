"""The tuner contract: what every tuner (sysctl, hugepages, thp, cpu, blockdev, bootargs, gpu) provides.

A tuner owns one domain of host tunables. The engine drives it in four moves:

  plan(policy, facts, paths) -> [Change]   pure read: current value, desired value, action, reason
  apply(change, writer)                   make the host hold change.value, only through the Writer
  read(change) -> str | None              the value the host holds now (verify and drift)
  restore(record, writer)                 put back a journal record's original value (rollback and revert)

Rules a tuner keeps (the engine relies on them):
- plan never writes. Validation that needs the host (a sysctl that does not exist, a scheduler the device does not
  offer, a governor the driver lacks) raises InputError(field="<policy field path>") from plan, before any write;
  the command turns the field into file:line.
- Hardware that is absent gives a Change with action "not_applicable", never an error.
- Every host write goes through the Writer it is handed (agent.tunable.writer; the engine passes its
  agent.tuning.writer.HostWriter), which journals the original first. A tuner that writes outside files (NVML)
  uses writer.write_custom and overrides restore.
- Targets are unique within a tuner; the journal keys records by "tuner:target".

The engine builds each tuner once per operation with `build(nvml)`: the NVML session its caller handed it (the
daemon's, the CLI's --nvml-sim one) reaches the tuners that need one; there is no process-wide session.

File-backed tunables need no code beyond plan: set Change.path, .value, .format and .compare and the defaults
below apply, verify and restore them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Self

from agent.fsio import read_text
from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.policy.model import Policy
from agent.tunable import formats
from agent.tunable.change import Change, satisfies
from agent.tunable.record import Record
from agent.tunable.writer import Writer

if TYPE_CHECKING:
    from agent.gpu.nvml import Nvml


class Tuner(ABC):
    """Base of every tuner. Subclasses set `name`, `order`, `domains` and `sections` and implement `plan`."""

    name: ClassVar[str]
    order: ClassVar[int] = 50
    """Apply order (lower first); revert runs in reverse journal order, so it needs no order of its own."""
    domains: ClassVar[tuple[str, ...]] = ()
    """Words other tuning daemons' `manages` lists (HostFacts.conflicts) use for what this tuner touches."""
    enabled_by_default: ClassVar[bool] = True
    sections: ClassVar[tuple[str, ...]] = ()
    """Policy fields this tuner plans (e.g. ("gpu",)); a set section no enabled tuner claims is `unsupported`."""

    @classmethod
    def build(cls, nvml: Nvml | None) -> Self:
        """The instance the engine drives for one operation (agent.tuners.registry.TunerSet). A tuner that talks
        to GPUs overrides this to keep `nvml`, the operation's NVML session (None: it opens one on first use)."""
        return cls()

    @abstractmethod
    def plan(self, policy: Policy, facts: HostFacts | None, paths: HostPaths) -> list[Change]:
        """Changes for this tuner's part of the policy (an empty list when the policy does not mention it)."""

    def read(self, change: Change) -> str | None:
        if change.path is None:
            return None
        return formats.parse(change.format, read_text(Path(change.path)))

    def satisfied(self, change: Change, current: str | None) -> bool:
        return satisfies(current, change.value, change.compare, change.format)

    def check_readback(self, change: Change, raw: str | None) -> str | None:
        """None when the value read back after a write is what was asked for, else what went wrong."""
        current = formats.parse(change.format, raw)
        if self.satisfied(change, current):
            return None
        return f"wrote {change.value!r}, reads back {current!r}"

    def restore_value(self, change: Change, original_raw: str) -> str:
        """What to write to a live kernel file to bring back `original_raw` (e.g. the bracketed choice)."""
        return formats.restore_value(change.format, original_raw)

    def apply(self, change: Change, writer: Writer) -> None:
        if change.path is None or change.value is None:
            raise NotImplementedError(f"{self.name}: {change.target} is not file-backed; override apply")
        writer.write_file(
            tuner=self.name, target=change.target, path=Path(change.path), value=change.value,
            fmt=change.format, desired=change.desired,
            restore_value=lambda raw: self.restore_value(change, raw),
            check=lambda raw: self.check_readback(change, raw))

    def restore(self, record: Record, writer: Writer) -> None:
        writer.restore_file(record)
