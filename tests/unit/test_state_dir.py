"""The state dir (journal, lock, token, worker logs) is ours alone: a symlink, a file or a directory owned by
another uid is refused, and an existing one is fixed to mode 0700."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import InputError
from agent.hostfs import HostPaths
from agent.tuning.state import StateDir
from tests.support.trees import tree_state


def test_new_state_dir_is_created_0700(tmp_path: Path) -> None:
    path = tmp_path / "a" / "state"
    StateDir(path).ensure()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_existing_state_dir_is_fixed_to_0700(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o757)
    StateDir(path).ensure()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_symlinked_state_dir_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.chmod(target, 0o755)
    link = tmp_path / "state"
    link.symlink_to(target)
    with pytest.raises(InputError, match="symlink") as err:
        StateDir(link).ensure()
    assert err.value.path == str(link)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # not chmod-ed through the link
    with pytest.raises(InputError, match="symlink"), StateDir(link).locked():
        pass
    assert not (target / "lock").exists()


def test_dangling_symlink_state_dir_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "state"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="symlink"):
        StateDir(link).ensure()
    assert not (tmp_path / "nowhere").exists()


def test_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        StateDir(path).ensure()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a directory to another uid")
def test_state_dir_owned_by_another_uid_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(InputError, match="owned by uid 65534"):
        StateDir(path).ensure()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


@pytest.mark.process
def test_cli_apply_with_symlinked_state_dir_exits_2_and_writes_nothing(host: HostPaths, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "state"
    link.symlink_to(target)
    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\nsysctl:\n  vm.swappiness: 1\n")
    before = tree_state(host.procfs.parent)
    roots = ["--procfs", str(host.procfs), "--sysfs", str(host.sysfs), "--rootfs", str(host.rootfs)]
    r = subprocess.run([sys.executable, "-m", "agent", "apply", str(policy), *roots, "--state-dir", str(link)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "symlink" in r.stderr and str(link) in r.stderr
    assert tree_state(host.procfs.parent) == before
    assert list(target.iterdir()) == []


def test_daemon_start_fixes_an_existing_state_dir_to_0700(tmp_path: Path) -> None:
    from agent.config import DaemonSettings
    from agent.daemon.runner import Daemon

    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o755)
    daemon = Daemon(DaemonSettings(state_dir=state, token_file=tmp_path / "state" / "token"))
    with pytest.raises(RuntimeError, match="stop here"):
        daemon.services.tuning.rollback_interrupted = _stop  # type: ignore[method-assign]
        daemon.start()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def _stop() -> None:
    raise RuntimeError("stop here")
