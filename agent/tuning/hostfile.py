"""Raw reads and writes of one host file, and whether it lives on a real kernel filesystem.

Kernel files (procfs, sysfs) are written with one write() of the value, as `echo value > file` does. A plain-file
tree (a fixture or a captured host given with --procfs/--sysfs) cannot react to a write, so there the writer
stores what the kernel would show afterwards (formats.render). The test is the filesystem's magic number, not
the path, so a kernel tree bind-mounted anywhere still counts as live.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

from agent.fsio import read_capped

PROC_SUPER_MAGIC = 0x9FA0
SYSFS_MAGIC = 0x62656572
KERNEL_MAGICS = {PROC_SUPER_MAGIC, SYSFS_MAGIC}
ENCODING = "latin-1"  # bijective bytes <-> str, so journaled originals restore byte for byte


class _StatFs(ctypes.Structure):
    # struct statfs on 64-bit Linux: f_type comes first; the rest is padding for our purposes
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 120)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(_StatFs)]


def fs_magic(path: Path) -> int | None:
    buf = _StatFs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return None
    return int(buf.f_type) & 0xFFFFFFFF


def is_kernel_file(path: Path) -> bool:
    """True when `path` is on procfs or sysfs (a write reaches the kernel)."""
    return fs_magic(path) in KERNEL_MAGICS


def read_raw(path: Path) -> str | None:
    """The file's exact contents (latin-1), or None when it does not exist."""
    try:
        return read_capped(path).decode(ENCODING)
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_raw(path: Path, data: str, *, create: bool = False) -> None:
    """One write() of `data`. Raises OSError as the kernel reports it (EINVAL, EBUSY, EACCES, ...)."""
    payload = data.encode(ENCODING)
    flags = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC
    if create:
        flags |= os.O_CREAT
    fd = os.open(path, flags, 0o644)
    try:
        written = os.write(fd, payload)
        if written != len(payload):
            raise OSError(errno.EIO, f"short write ({written} of {len(payload)} bytes)")
        if not is_kernel_file(path):
            os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
