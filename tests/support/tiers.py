"""What each test tier needs, checked once per session. A missing need skips the test with a reason that names
it — except on CI (CI=true, root, Linux), where the root/kernel/engine/systemd/ansible/prometheus tiers must run:
there a missing need fails the test instead of skipping it silently."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

REQUIRED_ON_CI = {"root", "kernel", "engine", "systemd", "ansible", "prometheus"}


def _root() -> str | None:
    if not sys.platform.startswith("linux"):
        return "not Linux"
    if os.geteuid() != 0:
        return "not root (uid 0)"
    return None


def _kernel() -> str | None:
    why = _root()
    if why:
        return why
    if not os.access("/proc/sys/vm/swappiness", os.W_OK):
        return "/proc/sys is not writable"
    return None


def _engine() -> str | None:
    try:
        from agent.model_files import default_model_path
        from agent.worker.llamacpp_bin import find_llama_server
    except ImportError as e:
        return f"engine support not importable: {e}"
    try:
        find_llama_server()
    except Exception as e:
        return f"llama-server not installed ({e}); run `make setup`"
    try:
        default_model_path()
    except Exception as e:
        return f"bundled model not installed ({e}); run `make setup`"
    return None


def _systemd() -> str | None:
    why = _root()
    if why:
        return why
    if not shutil.which("systemd-nspawn"):
        return "systemd-nspawn not installed (Debian package systemd-container)"
    cache = Path(os.environ.get("HOSTTUNE_CACHE", Path.home() / ".cache/hosttune"))
    if not any(cache.glob("rootfs/*/usr/lib/systemd/systemd")):
        return f"no cached debootstrap rootfs under {cache}/rootfs (run `make setup`)"
    return None


def _ansible() -> str | None:
    why = _root()
    if why:
        return why
    venv_bin = Path(sys.executable).parent
    if not ((venv_bin / "ansible-playbook").exists() or shutil.which("ansible-playbook")):
        return "ansible-playbook not installed"
    # The fleet's sshd runs inside its nspawn'ed hosts (scripts/build-fleet-rootfs.sh builds their rootfs, and
    # installs systemd-nspawn); this machine only needs the SSH client.
    if not shutil.which("ssh"):
        return "ssh client not installed (Debian package openssh-client)"
    return None


def _process() -> str | None:
    """The process tier (tests/process, and tests marked `process`) starts child Pythons and servers on loopback
    ports: it needs nothing but this Python, so it runs wherever the unit tier runs."""
    return None


def _prometheus() -> str | None:
    """The operator pack's tests run Debian's real `prometheus` and `promtool` (scripts/install-system-deps.sh test
    installs the package)."""
    for name in ("promtool", "prometheus"):
        if not shutil.which(name):
            return f"{name} not installed (Debian package prometheus; scripts/install-system-deps.sh test)"
    return None


def _gpu() -> str | None:
    if not Path("/dev/nvidiactl").exists():
        return "no NVIDIA GPU (/dev/nvidiactl absent)"
    return None


CHECKS: dict[str, Callable[[], str | None]] = {
    "process": _process,
    "root": _root,
    "kernel": _kernel,
    "engine": _engine,
    "systemd": _systemd,
    "ansible": _ansible,
    "prometheus": _prometheus,
    "gpu": _gpu,
}


@functools.cache
def missing(tier: str) -> str | None:
    """None when the tier can run here, else what is missing."""
    return CHECKS[tier]()


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
