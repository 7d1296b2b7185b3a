"""What the supervisor asks about a running worker: does its health URL answer, and is the process answering on
its port really the worker (not a local user who bound the port first)."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
from urllib.parse import urlsplit

from agent.hostfs import HostPaths
from agent.worker.engines import Launch


def port_listeners(paths: HostPaths, port: int) -> list[int] | None:
    """The uids owning the listening TCP sockets (IPv4 and IPv6) on `port` in our network namespace, from
    /proc/net/tcp{,6} (readable without ptrace rights: the unit's ProtectProc=invisible hides the worker's own
    /proc entry from the daemon). None when neither table can be read."""
    uids: list[int] = []
    seen = False
    for name in ("tcp", "tcp6"):
        try:
            with open(paths.proc("net", name), encoding="ascii", errors="replace") as f:
                seen = True
                next(f, None)  # the header
                for line in f:
                    cols = line.split()
                    if len(cols) > 7 and cols[3] == "0A" and cols[1].rpartition(":")[2] == f"{port:04X}":
                        uids.append(int(cols[7]))
        except (OSError, ValueError):
            continue
    return uids if seen else None


def listens_on_own_port(paths: HostPaths, uid: int, base_url: str | None) -> bool:
    """Whether every listener on the port of `base_url` (where the gateway sends requests) is the worker's uid,
    and there is one. A local user who bound that port before the worker (during a restart's backoff, or while
    the engine initialises) answers the health check too: taking that for "ready" sent clients' prompts to them.
    True when there is no port to check or no socket table to read."""
    port = urlsplit(base_url).port if base_url else None
    if port is None:
        return True
    uids = port_listeners(paths, port)
    return uids is None or (bool(uids) and all(u == uid for u in uids))


def worker_uid(launch: Launch) -> int:
    """The uid the worker runs as: the exec shim's --uid (agent/worker/binding.py), else ours."""
    prefix = launch.binding.prefix
    if "--uid" in prefix[:-1]:
        return int(prefix[prefix.index("--uid") + 1])
    return os.geteuid()


def worker_ids(launch: Launch) -> tuple[int, int] | None:
    """(uid, gid) the exec shim switches the worker to, or None when it runs as we do."""
    prefix = launch.binding.prefix
    if "--uid" in prefix[:-1] and "--gid" in prefix[:-1]:
        return int(prefix[prefix.index("--uid") + 1]), int(prefix[prefix.index("--gid") + 1])
    return None


def probe_health(url: str, timeout: float) -> int | None:
    """HTTP status of the health URL; None when nothing answers (or the URL is not http/https). No proxies:
    the worker is local. The whole probe has a deadline (twice probe_timeout_s): the socket timeout is per
    read, and a worker that trickles its reply head a byte at a time would otherwise hold this thread, and with
    it every stop and restart, for as long as it likes."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    try:
        conn = conn_cls(parts.hostname, parts.port, timeout=timeout)
    except ValueError:
        return None

    expired = threading.Event()

    def cut() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(2 * timeout, cut)
    timer.daemon = True
    timer.start()
    try:
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        status = int(conn.getresponse().status)
        return None if expired.is_set() else status  # a head cut short is no answer
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        timer.cancel()
        conn.close()
