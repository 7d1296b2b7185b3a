"""Serve the gateway with uvicorn: in the foreground (`hosttune gateway`) or in a background thread (the daemon,
benchmarks, tests). Loopback unless the caller explicitly allows a remote address: the gateway has no auth of its
own and fronts an engine that has none either."""

from __future__ import annotations

import json
import threading
import time

import uvicorn
from starlette.applications import Starlette

from agent.errors import HostError, InputError
from agent.httpguard import ServerLimits, host_names, is_loopback, server_config


def openai_error(status: int, kind: str, message: str) -> bytes:
    """The guard's refusals in the shape OpenAI clients parse."""
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


class GatewayServer:
    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 8080, allow_remote: bool = False,
                 log_level: str = "warning", limits: ServerLimits | None = None) -> None:
        if not is_loopback(host) and not allow_remote:
            raise InputError(f"{host!r} is not a loopback address; pass --allow-remote to expose the gateway",
                             field="--host")
        self.config = server_config(app, limits or ServerLimits(host_names(host), max_connections=1024),
                                    render=openai_error, host=host, port=port, log_level=log_level, lifespan="on",
                                    timeout_graceful_shutdown=5, access_log=False)
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        servers = getattr(self.server, "servers", None)
        if servers:
            return int(servers[0].sockets[0].getsockname()[1])
        return int(self.config.port)

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def run(self) -> None:
        """Serve in this thread until SIGINT/SIGTERM."""
        self.server.run()
        if not self.server.started:
            raise HostError(f"the gateway could not listen on {self.config.host}:{self.config.port}")

    def start(self, timeout_s: float = 15.0) -> GatewayServer:
        self._thread = threading.Thread(target=self.server.run, name="hosttune-gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise HostError(f"the gateway could not listen on {self.config.host}:{self.config.port}")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
