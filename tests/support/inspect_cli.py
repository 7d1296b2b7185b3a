"""Run the real `hosttune inspect` in a subprocess against a host tree (shared by the inspect test modules)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FIXTURE_HOSTS = Path(__file__).resolve().parent.parent / "fixtures" / "hosts"
SCENARIOS = sorted(p.name for p in FIXTURE_HOSTS.iterdir() if (p / "proc").is_dir()) if FIXTURE_HOSTS.is_dir() else []


def hosttune_argv() -> list[str]:
    """The installed console script next to this interpreter (.venv/bin/hosttune), else `python -m agent`."""
    script = Path(sys.executable).parent / "hosttune"
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent"]


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without HOSTTUNE_* roots (a developer's settings must not leak into tests)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTTUNE_")}
    env.update(extra)
    return env


def tree_args(root: Path) -> list[str]:
    args = ["--rootfs", str(root), "--procfs", str(root / "proc"), "--sysfs", str(root / "sys")]
    if (root / "nvml.json").exists():
        args += ["--nvml-sim", str(root / "nvml.json")]
    return args


def run_inspect(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*hosttune_argv(), "inspect", *args], capture_output=True, text=True, timeout=timeout,
                          env=clean_env() if env is None else env, check=False)
