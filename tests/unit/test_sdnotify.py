"""sd_notify over a real unix datagram socket: path and abstract names, message format, the watchdog interval."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import Notifier, socket_address, watchdog_interval_s


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(2)
    yield str(path), sock
    sock.close()


def fields(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().split("\n"))


def test_ready_status_watchdog_stopping(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    n = Notifier(path)
    assert n.enabled
    assert n.ready("ready: API up")
    assert fields(sock.recv(4096)) == {"READY": "1", "STATUS": "ready: API up", "MAINPID": str(os.getpid())}
    assert n.status("two\nlines")
    assert sock.recv(4096) == b"STATUS=two lines"
    assert n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert n.reloading()
    assert fields(sock.recv(4096))["RELOADING"] == "1"
    assert n.stopping("bye")
    assert fields(sock.recv(4096)) == {"STOPPING": "1", "STATUS": "bye"}
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"hosttune-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        assert Notifier("@" + name).ready()
        assert fields(sock.recv(4096))["READY"] == "1"
    finally:
        sock.close()
    assert socket_address("@x") == b"\0x" and socket_address("/run/x") == "/run/x"


def test_without_systemd_everything_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and n.ready() is False and n.watchdog() is False
    # A socket path nobody listens on: False, never an exception (the daemon must not die of it).
    assert Notifier(str(tmp_path / "gone")).ready() is False


def test_notify_socket_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                            listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert Notifier().status("x")
    assert sock.recv(4096) == b"STATUS=x"


@pytest.mark.parametrize(("env", "expected"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "4242"}, 1.5),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(env, pid=4242) == expected
