"""Small file helpers used everywhere (psutil's cat() idea): tolerant reads, strict parses, atomic state writes.

Reads of host files return None when the file is absent ("no data here"); a file that exists but cannot be
parsed raises InputError naming the path, because that is a broken tree, not a missing feature.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from agent.errors import HostError, InputError

# Every file hosttune reads (host, policy, config, state) is read through read_capped. The largest real one is a
# few hundred KiB (/proc/cpuinfo of a big host); procfs reports st_size 0 for files that read without end.
MAX_READ_BYTES = 4 << 20
READ_CHUNK = 64 << 10


def read_capped(path: Path, limit: int = MAX_READ_BYTES) -> bytes:
    """The file's bytes, never more than `limit`: a longer file is refused (InputError naming it) after reading
    limit+1 bytes, whatever st_size says. Not a regular file (a FIFO, a device) is refused without blocking.
    OSError (absent, permission) propagates for the caller to map."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise InputError("not a regular file", path=path)
        # Small reads: /proc/sys handlers allocate a kernel buffer of the requested size (a 4 MiB read fails
        # with ENOMEM) and some procfs files want multiples of 8 bytes.
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > limit:
        raise InputError(f"file is larger than the limit of {limit} bytes: refusing to read it", path=path)
    return b"".join(chunks)


def read_text_capped(path: Path, limit: int = MAX_READ_BYTES, errors: str = "strict") -> str:
    """read_capped, decoded as UTF-8 (UnicodeDecodeError with errors='strict')."""
    return read_capped(path, limit).decode("utf-8", errors)


def read_text(path: Path) -> str | None:
    """Contents of a host file, or None if it does not exist or cannot be read (permission, EIO on sysfs).
    Larger than MAX_READ_BYTES: InputError (a broken tree, not a missing feature)."""
    try:
        return read_text_capped(path, errors="replace")
    except OSError:
        return None


def read_str(path: Path) -> str | None:
    text = read_text(path)
    return None if text is None else text.strip()


def read_int(path: Path) -> int | None:
    """An integer file (sysfs style); None if absent, InputError if present but not an integer."""
    text = read_str(path)
    if text is None or text == "":
        return None
    try:
        return int(text.split()[0], 0) if text.startswith("0x") else int(text.split()[0])
    except ValueError:
        raise InputError(f"expected an integer, found {text[:40]!r}", path=path) from None


def read_bracketed(path: Path) -> tuple[str | None, list[str]]:
    """Parse sysfs choice files like 'always [madvise] never' -> ('madvise', ['always', 'madvise', 'never'])."""
    text = read_str(path)
    if text is None:
        return None, []
    active = None
    choices = []
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            word = word[1:-1]
            active = word
        choices.append(word)
    return active, choices


def parse_cpu_list(text: str | None) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11]. Empty or None -> []."""
    cpus: list[int] = []
    if not text:
        return cpus
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.extend(range(int(lo), int(hi) + 1))
        else:
            cpus.append(int(part))
    return cpus


def format_cpu_list(cpus: list[int] | set[int]) -> str:
    """[0, 1, 2, 3, 8] -> '0-3,8'."""
    out: list[str] = []
    ordered = sorted(set(cpus))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write a state file atomically and durably: temp file in the same dir, fsync, rename, fsync dir."""
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise HostError(f"cannot write state file: {e.strerror}", path=path) from e


def atomic_write_json(path: Path, obj: Any, mode: int = 0o600) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", mode)


def load_json(path: Path) -> Any:
    try:
        return json.loads(read_text_capped(path))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e.msg}", path=path, line=e.lineno) from None
