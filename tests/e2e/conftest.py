"""Fixtures the Ansible fleet tests share: the fleet rootfs and the hosttune wheelhouse the role installs.

`wheelhouse` lands in the requesting module's own `work` directory (each fleet module defines `work`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fleet_rootfs() -> Path:
    out = subprocess.run([str(REPO / "scripts/build-fleet-rootfs.sh")], capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    path = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    assert path and Path(path, "usr/sbin/sshd").exists(), f"no fleet rootfs: {out.stderr[-2000:]}"
    return Path(path)


@pytest.fixture(scope="module")
def wheelhouse(work: Path) -> Path:
    out = subprocess.run([str(REPO / "scripts/build-wheelhouse.sh"), str(work / "wheelhouse.tar")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return work / "wheelhouse.tar"
