"""The test suite's own wiring: the `host` fixture's default is the committed fixture host and a test can name
another; the unit tier refuses child processes and TCP listeners unless a test is marked `process`."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.hostfs import HostPaths
from tests.support.trees import DEFAULT_HOST, FIXTURE_HOSTS, SCENARIOS, tree_state


def without_rootfs(state: dict[str, bytes]) -> dict[str, bytes]:
    return {rel: data for rel, data in state.items() if rel != "rootfs" and not rel.startswith("rootfs/")}


def test_default_host_is_a_copy_of_the_committed_fixture_host(host: HostPaths) -> None:
    committed = tree_state(FIXTURE_HOSTS / DEFAULT_HOST)
    assert committed  # the committed tree is there, not an empty directory
    assert without_rootfs(tree_state(host.procfs.parent)) == committed


@pytest.mark.host("server")
def test_a_test_names_its_host_with_the_host_marker(host: HostPaths, tmp_path: Path) -> None:
    built = tmp_path / "built"
    SCENARIOS["server"](built)
    assert tree_state(host.procfs.parent) == tree_state(built)
    assert tree_state(host.procfs.parent) != tree_state(FIXTURE_HOSTS / DEFAULT_HOST)


def test_unit_tier_refuses_a_child_process() -> None:
    with pytest.raises(pytest.fail.Exception, match="started a process"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


def test_unit_tier_refuses_a_tcp_listener() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        with pytest.raises(pytest.fail.Exception, match="listened on a TCP port"):
            s.listen()


def test_unit_tier_allows_a_unix_socket_listener(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))
        s.listen()


@pytest.mark.process
def test_a_process_marked_unit_test_may_start_a_process() -> None:
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
