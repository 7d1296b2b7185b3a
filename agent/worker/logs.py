"""Size-rotated log files for the worker's stdout/stderr and the supervisor's event log.

The supervisor pumps the worker's pipes itself (instead of handing the child a file descriptor) so it can keep
the last lines of stderr for crash reasons and rotate by size: NAME, NAME.1 ... NAME.<backups>.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import IO, Any


class RotatingLog:
    """Append-only file that rotates when the next write would pass max_bytes. Thread-safe."""

    def __init__(self, path: Path, max_bytes: int = 10 * 1024 * 1024, backups: int = 3) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        path.parent.mkdir(parents=True, exist_ok=True)

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across writes, closed in close()
        return self._file

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for i in range(self.backups, 0, -1):
            src = self.path if i == 1 else self.path.with_name(f"{self.path.name}.{i - 1}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i}"))
        if self.backups == 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def write(self, data: bytes) -> None:
        with self._lock:
            f = self._open()
            size = f.tell()
            if size > 0 and size + len(data) > self.max_bytes:
                self._rotate()
                f = self._open()
            f.write(data)
            f.flush()

    def write_json(self, obj: dict[str, Any]) -> None:
        self.write((json.dumps(obj, sort_keys=True) + "\n").encode())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
