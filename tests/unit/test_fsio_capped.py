"""Every file hosttune reads goes through fsio.read_capped: a hard byte cap that does not trust st_size (procfs
reports 0 for files that read without end) and never blocks on a FIFO."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import InputError
from agent.fsio import MAX_READ_BYTES, load_json, read_capped, read_text
from agent.policy.yamlnodes import MAX_FILE_BYTES, read_policy_yaml


def test_a_file_over_the_cap_is_refused_naming_it(tmp_path: Path) -> None:
    f = tmp_path / "big"
    f.write_bytes(b"x" * 101)
    assert read_capped(f, 101) == b"x" * 101
    with pytest.raises(InputError, match="larger than the limit of 100 bytes") as e:
        read_capped(f, 100)
    assert e.value.path == str(f)


def test_procfs_st_size_zero_is_not_trusted() -> None:
    status = Path("/proc/self/status")
    assert status.stat().st_size == 0
    with pytest.raises(InputError, match="larger than the limit of 64 bytes"):
        read_capped(status, 64)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_capped(fifo)
    with pytest.raises(InputError):
        read_policy_yaml(fifo)


def test_host_and_state_readers_are_capped(tmp_path: Path) -> None:
    f = tmp_path / "huge"
    with f.open("wb") as out:
        out.truncate(MAX_READ_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(InputError, match="larger than"):
        read_text(f)
    with pytest.raises(InputError, match="larger than"):
        load_json(f)
    assert read_text(tmp_path / "absent") is None and read_text(tmp_path) is None


def test_policy_file_over_the_cap_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("name: p\ndescription: " + "x" * MAX_FILE_BYTES + "\n")
    with pytest.raises(InputError, match="larger than"):
        read_policy_yaml(f)


@pytest.mark.process
def test_cli_extends_to_an_endless_proc_file_is_refused_at_the_extends_line(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\nextends: /proc/self/pagemap\n")
    r = subprocess.run([sys.executable, "-m", "agent", "policy", "validate", str(policy)], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "HOSTTUNE_STATE_DIR": str(tmp_path / "state")})
    assert r.returncode == 2, r.stderr
    assert f"{policy}:2: extends: parent policy '/proc/self/pagemap'" in r.stderr


def test_real_proc_sys_and_pagemap_read_in_small_chunks() -> None:
    """/proc/sys handlers allocate a kernel buffer of the requested size: one read of the whole cap failed with
    ENOMEM; the cap is enforced over small reads instead (also what /proc/self/pagemap needs)."""
    assert read_capped(Path("/proc/sys/vm/swappiness")).strip().isdigit()
    with pytest.raises(InputError, match="larger than the limit"):
        read_capped(Path("/proc/self/pagemap"), 1 << 20)
