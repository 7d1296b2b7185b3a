"""Helpers for the kernel-tier tuning tests: the real CLI, fresh private loop devices, a tier-wide lock, and
snapshots of exactly the live files a test touches.

Loop devices are created with LOOP_CTL_ADD on /dev/loop-control under a number nobody uses and removed with
LOOP_CTL_REMOVE: queue settings outlive a detach, so a device is never shared between tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81
LOOP_CONTROL = "/dev/loop-control"
TIER_LOCK = Path("/tmp/hosttune-kernel-tier.lock")
SYS = Path("/sys")
PROC_SYS = Path("/proc/sys")


@contextlib.contextmanager
def kernel_tier_lock() -> Iterator[None]:
    """Serialize tests that change global kernel values, across pytest sessions of parallel workers."""
    fd = os.open(TIER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def fresh_loop_device() -> Iterator[str]:
    """A brand-new loop device (no backing file needed for queue settings); removed afterwards."""
    fd = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(50):
            n = random.randint(300, 9999)
            if (SYS / "block" / f"loop{n}").exists():
                continue
            try:
                index = fcntl.ioctl(fd, LOOP_CTL_ADD, n)
            except FileExistsError:
                continue
            break
        else:
            raise RuntimeError("no free loop device number")
        name = f"loop{index}"
        try:
            yield name
        finally:
            fcntl.ioctl(fd, LOOP_CTL_REMOVE, index)
    finally:
        os.close(fd)


def read(path: Path) -> bytes:
    return path.read_bytes()


def snapshot(paths: list[Path]) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in paths}


def restore(snap: dict[str, bytes]) -> None:
    """Last-resort restore of values a failed test left (scalar files only; choice files need the choice)."""
    for p, raw in snap.items():
        path = Path(p)
        if not path.exists() or path.read_bytes() == raw:
            continue
        text = raw.decode()
        if "[" in text:
            text = text[text.index("[") + 1:text.index("]")]
        with contextlib.suppress(OSError):
            path.write_text(text.strip())


def hosttune(state: Path, *args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None,
             timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """The real CLI against the live host, with its own state dir."""
    argv = [*(prefix or []), sys.executable, "-m", "agent", *args, "--state-dir", str(state)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=Path(__file__).resolve().parents[2])


def other_choice(path: Path, avoid: set[str] | None = None) -> str:
    """A choice the file offers other than the active one (and other than `avoid`)."""
    text = path.read_text()
    active = text[text.index("[") + 1:text.index("]")]
    offered = [w.strip("[]") for w in text.split()]
    return next(c for c in offered if c != active and c not in (avoid or set()))
