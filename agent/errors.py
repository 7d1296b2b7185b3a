"""The exception hierarchy. Every error a user can cause or meet carries enough to print one clear line.

InputError (exit 2): bad input — a policy, a CLI argument, a host root that does not exist, a malformed file.
HostError (exit 1): the host refused or broke something while we acted on it; WriteFailed and TargetGone are the
two ways a host write (agent.tuning.writer) fails.
"""

from __future__ import annotations

from pathlib import Path


class HostTuneError(Exception):
    """Base of every error hosttune raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, path: Path | str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field

    def where(self) -> str:
        """'file:line: field' prefix, whichever parts are known."""
        parts = []
        if self.path:
            parts.append(f"{self.path}:{self.line}" if self.line else self.path)
        if self.field:
            parts.append(self.field)
        return ": ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.message}" if where else self.message


class InputError(HostTuneError):
    """Bad input: nothing was written; exit code 2."""

    exit_code = 2


class HostError(HostTuneError):
    """The host failed us while reading or writing a value."""

    exit_code = 1


class WriteFailed(HostError):
    """A host write was refused or did not read back as asked; names the tunable."""

    def __init__(self, target: str, message: str, *, path: str | None = None) -> None:
        super().__init__(f"{target}: {message}", path=path)
        self.target = target
        self.detail = message


class TargetGone(HostError):
    """A journaled file no longer exists on this host (a renamed block device): nothing to restore."""


class NotApplicable(HostTuneError):
    """The tunable or fact does not exist on this host (no cpufreq, no GPU, no NVMe). Not an error to users."""

    exit_code = 0
