"""HostPaths: where every host read and write is rooted; option > environment > live default."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from agent.errors import InputError
from agent.hostfs import HostPaths

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_live_host() -> None:
    paths = HostPaths.from_options(env={})
    assert (paths.procfs, paths.sysfs, paths.rootfs) == (Path("/proc"), Path("/sys"), Path("/"))
    assert paths.is_live
    assert paths.udev_data == Path("/run/udev/data") and paths.dev == Path("/dev")


def test_environment_then_options() -> None:
    env = {"HOSTTUNE_PROCFS": "/e/proc", "HOSTTUNE_SYSFS": "/e/sys", "HOSTTUNE_ROOTFS": "/e"}
    from_env = HostPaths.from_options(env=env)
    assert (from_env.procfs, from_env.sysfs, from_env.rootfs) == (Path("/e/proc"), Path("/e/sys"), Path("/e"))
    assert not from_env.is_live
    mixed = HostPaths.from_options(procfs="/o/proc", env=env)
    assert (mixed.procfs, mixed.sysfs) == (Path("/o/proc"), Path("/e/sys"))
    assert mixed.udev_data == Path("/e/run/udev/data")


def test_joins() -> None:
    paths = HostPaths(procfs=Path("/t/proc"), sysfs=Path("/t/sys"), rootfs=Path("/t"))
    assert paths.proc("self", "limits") == Path("/t/proc/self/limits")
    assert paths.sys("block/vda/queue/read_ahead_kb") == Path("/t/sys/block/vda/queue/read_ahead_kb")
    assert paths.root("/run/tlp") == Path("/t/run/tlp")  # an absolute path stays under rootfs
    assert paths.sysctl("net.ipv4.ip_local_port_range") == Path("/t/proc/sys/net/ipv4/ip_local_port_range")
    assert paths.sysctl("fs.inotify.max_user_watches") == Path("/t/proc/sys/fs/inotify/max_user_watches")


def test_immutable() -> None:
    paths = HostPaths()
    with pytest.raises(dataclasses.FrozenInstanceError):
        paths.procfs = Path("/elsewhere")  # type: ignore[misc]


def test_check_names_the_missing_root(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "sys").write_text("a file, not a directory\n")
    paths = HostPaths(procfs=tmp_path / "proc", sysfs=tmp_path / "sys", rootfs=tmp_path)
    with pytest.raises(InputError) as err:
        paths.check()
    assert err.value.path == str(tmp_path / "sys") and err.value.exit_code == 2


def _path_literals(source: str) -> list[str]:
    """String constants that are live-root paths ('/proc', '/sys/block', ...), docstrings excepted."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and re.match(r"^/(proc|sys)(/|$)", node.value)]


def test_only_hostfs_names_proc_and_sys() -> None:
    """The one module in agent/ allowed to spell the live roots as paths (DESIGN: HostPaths is the only way in)."""
    offenders = {str(p.relative_to(REPO)): found for p in (REPO / "agent").rglob("*.py")
                 if p.name != "hostfs.py" and (found := _path_literals(p.read_text()))}
    assert offenders == {}
    assert _path_literals('x = "/sys/block"\n') == ["/sys/block"]  # the check itself can fail
