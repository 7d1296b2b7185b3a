"""A private llama-server for benchmarks, sweeps and end-to-end tests — not the daemon's supervised worker.

`hosttune bench --sweep` must restart the engine with different knobs at every grid point, on a port nobody else
uses, and must not disturb a production worker; so it starts its own process here (argument list, no shell,
--host 127.0.0.1, explicit --port) and stops only that process, by PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from agent.errors import HostError, InputError
from agent.worker.llamacpp_bin import find_llama_server

# knob -> llama-server flag. Engine knobs need a restart; nothing changes them live.
KNOB_FLAGS = {"np": "-np", "c": "-c", "b": "-b", "ub": "-ub", "ctk": "-ctk", "ctv": "-ctv", "t": "-t",
              "tb": "-tb", "ngl": "-ngl"}
BOOL_KNOBS = {"kvu": "-kvu", "cont_batching": "-cb"}
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the process that started it dies (a benchmark killed by a
    timeout must not leave its private engine running). Linux delivers it when the *thread* that started the
    engine exits, so start it from a thread that outlives it (the main thread in the CLI and benchmarks)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def knob_args(knobs: Mapping[str, object]) -> list[str]:
    args: list[str] = []
    for name, value in knobs.items():
        if name in KNOB_FLAGS:
            args += [KNOB_FLAGS[name], str(value)]
        elif name in BOOL_KNOBS:
            if str(value).lower() in ("1", "true", "yes", "on"):
                args.append(BOOL_KNOBS[name])
        else:
            known = ", ".join(sorted([*KNOB_FLAGS, *BOOL_KNOBS]))
            raise InputError(f"unknown engine knob {name!r} (known: {known})", field="--sweep")
    return args


class LocalLlamaServer:
    ready_poll_s = 0.1  # /health poll interval while starting; a load-time benchmark polls finer

    def __init__(self, model: Path, port: int | None = None, threads: int = 2,
                 extra_args: Sequence[str] = (), log_path: Path | None = None, defaults: bool = False) -> None:
        self.binary = find_llama_server()
        self.defaults = defaults  # llama-server's own defaults: -m, --host, --port and nothing else (bench --compare)
        self.model = model
        self.port = port or free_port()
        self.threads = threads
        self.extra_args = list(extra_args)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def argv(self) -> list[str]:
        if self.defaults:
            return [str(self.binary.path), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port)]
        args = [str(self.binary.path), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                "--metrics", "-t", str(self.threads)]
        return args + self.extra_args

    def start(self, timeout_s: float = 120.0) -> str:
        if self.proc is not None and self.proc.poll() is None:
            raise HostError("llama-server already running", path=str(self.binary.path))
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(self.argv(), env=self.binary.env(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=die_with_parent)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]
        self.wait_ready(timeout_s)
        return self.url

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    code = None if self.proc is None else self.proc.returncode
                    raise HostError(f"llama-server exited with status {code} while starting"
                                    + (f" (log: {self.log_path})" if self.log_path else ""))
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + "/health").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise HostError(f"llama-server not ready after {timeout_s:g} s")
                time.sleep(self.ready_poll_s)

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests of the gateway's hold/retry)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> LocalLlamaServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
