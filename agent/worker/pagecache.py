"""The model file in the page cache: how much of it is resident, drop it (to measure a cold start), pre-warm it.

llama.cpp mmaps the GGUF file, so a cold start reads every weight from disk while the server is "loading";
reading the file once beforehand (sequential, large reads) turns that into page-cache hits. Dropping uses
POSIX_FADV_DONTNEED on our own file only: it never touches the rest of the host's cache.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from agent.errors import HostError

CHUNK = 8 * 1024 * 1024


class PrewarmResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    bytes_read: int
    seconds: float
    resident_before: float | None
    resident_after: float | None


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


def resident_fraction(path: Path) -> float | None:
    """Fraction of the file's pages in the page cache (mincore on a fresh read-only mapping); None if unknown."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 1.0
        libc = _libc()
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                return None
            return sum(b & 1 for b in vec) / pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def drop(path: Path) -> None:
    """Evict this file's clean pages from the page cache (a cold start for measurement)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise HostError(f"cannot open model file: {e.strerror}", path=path) from e
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def prewarm(path: Path) -> PrewarmResult:
    """Read the whole file once so the worker's mmap finds it in the page cache."""
    before = resident_fraction(path)
    start = time.monotonic()
    total = 0
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise HostError(f"cannot open model file: {e.strerror}", path=path) from e
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            n = os.readv(fd, [view])
            if n <= 0:
                break
            total += n
    finally:
        os.close(fd)
    seconds = time.monotonic() - start
    return PrewarmResult(path=str(path), bytes_read=total, seconds=round(seconds, 4), resident_before=before,
                         resident_after=resident_fraction(path))
