"""A real rig for the controller's recordings, end-to-end tests and benchmark: a supervised llama-server (the same
Supervisor the daemon uses), the real gateway in front of it in a background thread, and a closed-loop load of N
clients in another. Nothing here is simulated; it only saves each caller from wiring the parts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from agent.bench.client import RequestResult, send
from agent.bench.corpus import MixSpec
from agent.control.drain import Drain
from agent.control.ladder import Knobs
from agent.gateway.app import Gateway
from agent.gateway.server import GatewayServer
from agent.gateway.settings import GatewaySettings
from agent.gateway.upstream import SupervisedWorker
from agent.model_files import default_model_path
from agent.policy.model import WorkerSpec
from agent.worker.engines import LlamaCppEngine
from agent.worker.supervisor import RestartPolicy, Supervisor

# controller knob name -> `hosttune bench --sweep` knob name (agent.bench.llama_local.KNOB_FLAGS)
SWEEP_NAMES = {"parallel": "np", "ctx": "c", "batch": "b", "ubatch": "ub", "cache_type_k": "ctk",
               "cache_type_v": "ctv", "gpu_layers": "ngl", "threads": "t"}


def sweep_knobs(knobs: Knobs) -> dict[str, str]:
    return {SWEEP_NAMES[k]: str(v) for k, v in knobs.items() if v is not None and k in SWEEP_NAMES}


def free_port() -> int:
    from agent.bench.llama_local import free_port as _free

    return _free()


def supervised_llama(knobs: Knobs, state_dir: Path | None = None, threads: int = 2, port: int | None = None,
                     model: Path | None = None) -> Supervisor:
    """A Supervisor running llama-server on 127.0.0.1 with these knobs (not started)."""
    model_path = model or default_model_path()
    spec = WorkerSpec(port=port or free_port(), threads=threads, **knobs)
    engine = LlamaCppEngine()
    policy = RestartPolicy(backoff_initial_s=0.2, ready_timeout_s=120, stop_timeout_s=5, liveness_interval_s=2)
    return Supervisor(spec, lambda s: engine.launch(s, model_path, None), state_dir=state_dir, policy=policy)


@contextlib.contextmanager
def gateway_for(supervisor: Supervisor, drain: Drain | None = None, **settings: Any) -> Iterator[tuple[Gateway, str]]:
    """The real gateway in front of the supervised worker, served on a free loopback port (through the drain's
    endpoint when one is given)."""
    endpoint: Any = SupervisedWorker(supervisor)
    if drain is not None:
        endpoint = drain.wrap(endpoint)
    with serve_gateway(endpoint, **settings) as served:
        yield served


@contextlib.contextmanager
def serve_gateway(endpoint: Any, **settings: Any) -> Iterator[tuple[Gateway, str]]:
    """The real gateway in front of any worker endpoint (agent.gateway.upstream), on a free loopback port."""
    gw = Gateway(endpoint, GatewaySettings(**settings))
    server = GatewayServer(gw.app(), host="127.0.0.1", port=0).start()
    try:
        yield gw, server.url
    finally:
        server.stop()


class ClosedLoopLoad:
    """`clients` users, each sending its next streaming chat request as soon as the last one ended, until stop().
    Results (agent.bench.client.RequestResult) accumulate in `results`, times relative to start()."""

    def __init__(self, url: str, clients: int, mix: MixSpec | None = None, seed: int = 1, ignore_eos: bool = True,
                 timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.clients = clients
        self.mix = mix or MixSpec({"chat": 1.0}, max_tokens=32)
        self.seed = seed
        self.ignore_eos = ignore_eos
        self.timeout_s = timeout_s
        self.results: list[RequestResult] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = 0.0

    def start(self) -> ClosedLoopLoad:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="closed-loop-load",
                                        daemon=True)
        self._thread.start()
        return self

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.clients, max_keepalive_connections=self.clients)
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s, connect=10.0), limits=limits) as client:
            async def user(i: int) -> None:
                rng = random.Random(self.seed * 1000 + i)
                while not self._stop.is_set():
                    self.results.append(await send(client, self.url, "chat", self.mix.draw(rng), self.started,
                                                   ignore_eos=self.ignore_eos))

            await asyncio.gather(*(user(i) for i in range(self.clients)))

    def stop(self, timeout_s: float = 150.0) -> list[RequestResult]:
        """Stop issuing; wait for the requests in flight to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.results

    def __enter__(self) -> ClosedLoopLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
