"""sd_notify(3) without a dependency: one datagram per message to the unix socket named by $NOTIFY_SOCKET.

Why our own: the protocol is a newline-separated KEY=VALUE datagram, and the libraries that wrap it either pull in
libsystemd via ctypes or are unmaintained. What matters and is covered here: abstract-namespace sockets ('@name'
means a leading NUL byte), READY=1 only after the daemon is really serving, STATUS= text for `systemctl status`,
and WATCHDOG=1 pings at half of $WATCHDOG_USEC when $WATCHDOG_PID is ours (or unset).

A failed send never stops the daemon: outside systemd there is no socket and every call is a no-op returning False.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def socket_address(name: str) -> str | bytes:
    """Address for sendto(): '@foo' is the abstract name '\\0foo', anything else a filesystem path."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def watchdog_interval_s(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when no watchdog is asked of us."""
    environ = os.environ if env is None else env
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    wd_pid = environ.get("WATCHDOG_PID", "")
    if wd_pid and wd_pid.isdigit() and int(wd_pid) != (os.getpid() if pid is None else pid):
        return None  # the watchdog belongs to another process (e.g. we were started by a wrapper)
    return int(usec) / 2_000_000


class Notifier:
    """Sends sd_notify messages to systemd (or whatever listens on $NOTIFY_SOCKET)."""

    def __init__(self, socket_name: str | None = None) -> None:
        name = os.environ.get("NOTIFY_SOCKET", "") if socket_name is None else socket_name
        self.address: str | bytes | None = socket_address(name) if name else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send KEY=VALUE lines (READY=1, STATUS=..., ...) in one datagram; False if not under systemd or it failed."""
        if self.address is None:
            return False
        payload = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self.address)
            return True
        except OSError as e:
            log.warning("sd_notify failed: %s", e)
            return False

    def ready(self, status: str | None = None) -> bool:
        if status is None:
            return self.send(READY=1, MAINPID=os.getpid())
        return self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, text: str) -> bool:
        # STATUS is one line in `systemctl status`: keep it so.
        return self.send(STATUS=text.replace("\n", " "))

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def reloading(self, status: str = "reloading configuration") -> bool:
        return self.send(RELOADING=1, STATUS=status)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
