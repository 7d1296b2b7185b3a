"""Unit-tier guard: a unit test starts no child process and listens on no TCP port. A test that must (the CLI
as a user runs it, a server on a loopback port) belongs to the process tier: tests/process, or marked
`@pytest.mark.process` where it shares a module with unit tests. `make test-unit` runs `-m "not process"`."""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Any

import pytest

_listen = socket.socket.listen


@pytest.fixture(autouse=True)
def unit_tier_starts_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("process") is not None:
        return

    def no_child(self: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> None:
        pytest.fail(f"a unit test started a process ({args!r}): move it to tests/process or mark it "
                    "@pytest.mark.process", pytrace=False)

    def no_fork(*args: Any, **kw: Any) -> int:
        pytest.fail("a unit test forked a process: move it to tests/process or mark it @pytest.mark.process",
                    pytrace=False)

    def no_tcp_listen(self: socket.socket, *rest: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            pytest.fail("a unit test listened on a TCP port: move it to tests/process or mark it "
                        "@pytest.mark.process", pytrace=False)
        _listen(self, *rest)

    monkeypatch.setattr(subprocess.Popen, "__init__", no_child)
    monkeypatch.setattr(socket.socket, "listen", no_tcp_listen)
    monkeypatch.setattr(os, "fork", no_fork)
    monkeypatch.setattr(os, "posix_spawn", no_fork)
