"""Serve an ASGI app with uvicorn in a background thread, on a socket we bind ourselves.

Why bind ourselves: a unix socket must be 0600 from the moment it exists (uvicorn would chmod it 0666), and a TCP
port 0 (tests) must be known before READY is sent. Why a thread: the daemon's main thread owns the signals
(SIGHUP reload, SIGTERM stop) and the watchdog; uvicorn installs no signal handlers outside the main thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from agent.errors import HostError, InputError
from agent.httpguard import ServerLimits, host_names, server_config

log = logging.getLogger(__name__)


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP;
    # with it on, a reply written in two parts waited for the client's delayed ACK (44 ms per request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise HostError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def bind_unix(path: Path) -> socket.socket:
    """A listening unix socket with mode 0600 (created under umask 0177, so never wider even for an instant)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        if not stat.S_ISSOCK(st.st_mode):
            raise InputError("exists and is not a socket; refusing to replace it", path=path, field="api.unix_socket")
        path.unlink()  # a stale socket of a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as e:
        sock.close()
        raise HostError(f"cannot bind unix socket: {e.strerror}", path=path) from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


class ServerThread:
    """One uvicorn server in a daemon thread. start() returns once it accepts connections (or raises)."""

    def __init__(self, app: Any, sock: socket.socket, name: str, log_level: str = "warning",
                 limits: ServerLimits | None = None) -> None:
        self.sock = sock
        self.name = name
        self._unix_path = sock.getsockname() if sock.family == socket.AF_UNIX else None
        if limits is None:  # Host names from the bound address; a unix socket has no Host check (no browser)
            limits = ServerLimits(None if self._unix_path else host_names(str(sock.getsockname()[0])))
        # The control plane needs no uvloop: the plain asyncio loop keeps the daemon's idle memory down (the
        # gateway, on the data path, keeps uvicorn's "auto" choice).
        config = server_config(app, limits, log_config=None, log_level=log_level, access_log=False, lifespan="on",
                               timeout_graceful_shutdown=5, loop="asyncio")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        addr = self.sock.getsockname()
        if self.sock.family == socket.AF_UNIX:
            return f"unix:{addr}"
        host = f"[{addr[0]}]" if self.sock.family == socket.AF_INET6 else addr[0]
        return f"http://{host}:{addr[1]}"

    @property
    def port(self) -> int | None:
        return None if self.sock.family == socket.AF_UNIX else int(self.sock.getsockname()[1])

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as e:  # recorded and reported by start()/alive; a thread cannot raise to its owner
            self._error = e

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                if isinstance(self._error, Exception):
                    raise self._error
                raise HostError(f"{self.name} failed to start (see the log above)")
            if time.monotonic() > deadline:
                raise HostError(f"{self.name} did not start within {timeout_s:.0f} s")
            time.sleep(0.01)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self.server.should_exit

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.server.force_exit = True
            self._thread.join(2.0)
        self.sock.close()
        if self._unix_path:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)
