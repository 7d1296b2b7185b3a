"""Fleet hosts that run a real inference worker: llama-server on the bundled model behind each host's gateway.

The engine and the model are this machine's own (the venv's llama-server, `agent.model_files`' bundled GGUF),
bind-mounted READ-ONLY into every container (`Fleet(binds=worker_binds(rootfs))`); nothing is copied into the
hosts and no host can change them. The policy runs one small worker (1 thread, one slot, a 512-token context):
two such hosts on a 2-core machine leave room for the test, Ansible and Prometheus.

The gateway listens on the host's fleet address (`gateway.allow_remote`, set through hosttune_daemon_settings) so
the controller namespace can send traffic to it: `drive_load` runs agent.bench's closed loop there against several
hosts' gateways at once and returns, per host, what the client saw (every request's TTFT, output tokens, the
wall-clock window), for comparison with what the hosts export.

Run `python -m tests.e2e.fleet_worker load --out F URL...` inside the controller namespace (drive_load does it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.bench.corpus import MixSpec
from agent.bench.load import Bounds, Progress, Target, closed_loop
from agent.model_files import default_model_path
from agent.worker.llamacpp_bin import find_llama_server
from tests.e2e.fleet import Fleet, FleetError, FleetHost

REPO = Path(__file__).resolve().parents[2]
ENGINE_DIR = "/opt/hosttune-engine"  # bin/llama-server and lib/ inside each host (find_tool's layout)
MODEL_DIR = "/opt/hosttune-model"
GATEWAY_PORT = 8080
# Where the container's dynamic loader looks for system libraries (Debian multiarch).
SYSTEM_LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib", "lib")
LDD_LINE_RE = re.compile(r"^\s*(?P<name>\S+) => (?P<path>/\S+) \(0x[0-9a-f]+\)$")

WORKER_POLICY_TEXT = """\
name: {name}
description: Fleet worker test policy - llama-server on the bundled model, one thread, one slot, a small context.
sysctl:
  net.core.somaxconn: {somaxconn}   # why: a per-host value the test can see
worker:
  engine: llamacpp
  binary: {engine}/bin/llama-server   # this machine's engine, bind-mounted read-only
  model: {model}                      # the bundled GGUF, bind-mounted read-only
  threads: 1
  threads_batch: 1
  parallel: {parallel}
  ctx: {ctx}
"""


def worker_binds(rootfs: Path) -> list[tuple[Path, str]]:
    """(source, container path) read-only binds: the engine's bin/ and lib/, the model, and the system libraries
    the engine links that the fleet rootfs lacks (minbase Debian has no libgomp, for one)."""
    binary = find_llama_server()
    if binary.lib_dir is None:
        raise FleetError(f"{binary.path}: no lib/ next to bin/ (expected the llama-cpp-python wheel's layout)")
    model = default_model_path()
    binds = [(binary.path.parent, f"{ENGINE_DIR}/bin"), (binary.lib_dir, f"{ENGINE_DIR}/lib"),
             (model, f"{MODEL_DIR}/{model.name}")]
    for soname, lib in missing_system_libs(binary.path, binary.lib_dir, rootfs):
        binds.append((lib, f"/usr/lib/x86_64-linux-gnu/{soname}"))
    return binds


@contextlib.contextmanager
def worker_fleet(rootfs: Path, workdir: Path, size: int) -> Iterator[Fleet]:
    """A started fleet of `size` hosts that can run a worker (worker_binds), stopped on the way out."""
    fleet = Fleet(rootfs=rootfs, workdir=workdir, size=size, binds=worker_binds(rootfs))
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


def missing_system_libs(binary: Path, lib_dir: Path, rootfs: Path) -> list[tuple[str, Path]]:
    """(soname, file here) of the libraries `binary` resolves outside its own lib_dir that `rootfs` lacks."""
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib_dir)}
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30, env=env, check=True)
    missing = []
    for line in out.stdout.splitlines():
        m = LDD_LINE_RE.match(line)
        if m is None or Path(m["path"]).parent == lib_dir:
            continue
        if not any((rootfs / d / m["name"]).exists() for d in SYSTEM_LIB_DIRS):
            missing.append((m["name"], Path(os.path.realpath(m["path"]))))
    return missing


def worker_policy(name: str, somaxconn: int, parallel: int = 1, ctx: int = 512) -> str:
    """A policy text with a `worker:` section that runs on a fleet host booted with worker_binds()."""
    return WORKER_POLICY_TEXT.format(name=name, somaxconn=somaxconn, engine=ENGINE_DIR,
                                     model=f"{MODEL_DIR}/{default_model_path().name}", parallel=parallel, ctx=ctx)


def worker_daemon_settings(port: int = GATEWAY_PORT) -> dict[str, object]:
    """hosttune_daemon_settings for worker hosts: the gateway on the host's fleet address (Ansible fills in
    ansible_host per host), no controller (it would restart workers mid-measurement), slow background jobs."""
    return {
        "gateway": {"enabled": True, "host": "{{ ansible_host }}", "port": port, "allow_remote": True},
        "controller_enabled": False,
        "telemetry_interval_s": 5,
        "worker": {"ready_timeout_s": 120},
    }


def gateway_url(host: FleetHost, port: int = GATEWAY_PORT) -> str:
    return f"http://{host.address}:{port}"


# ---- traffic from the controller namespace ----------------------------------------------------------------------
@dataclass(frozen=True)
class HostLoad:
    """What the bench client saw of one gateway."""

    url: str
    started_unix: float
    ended_unix: float
    ttft_s: list[float]
    tokens_out: int
    ok: int
    errors: int

    @property
    def wall_s(self) -> float:
        return self.ended_unix - self.started_unix

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_out / self.wall_s


def drive_load(fleet: Fleet, urls: Sequence[str], duration_s: float, concurrency: int = 1,
               max_tokens: int = 48, out: Path | None = None) -> dict[str, HostLoad]:
    """Closed-loop chat traffic to every URL at once, from the controller namespace; per URL what the client saw."""
    out = out or fleet.workdir / "load.json"
    argv = fleet.in_controller([sys.executable, "-m", "tests.e2e.fleet_worker", "load", "--out", str(out),
                                "--duration", str(duration_s), "--concurrency", str(concurrency),
                                "--max-tokens", str(max_tokens), *urls])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 180, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise FleetError(f"load driver exited {proc.returncode}: {proc.stderr[-2000:]}")
    return {url: HostLoad(**row) for url, row in json.loads(out.read_text()).items()}


async def _load(urls: Sequence[str], duration_s: float, concurrency: int, max_tokens: int) -> dict[str, HostLoad]:
    mix = MixSpec({"chat": 1.0}, max_tokens=max_tokens)

    async def one(i: int, url: str) -> HostLoad:
        started = time.time()
        run = await closed_loop(Target(url), mix, concurrency, Bounds(duration_s=duration_s), random.Random(i),
                                Progress(enabled=False))
        ok = [r for r in run.results if r.ok]
        return HostLoad(url, started, time.time(), [r.ttft_s for r in ok if r.ttft_s is not None],
                        sum(r.tokens_out for r in ok), len(ok), len(run.results) - len(ok))

    loads = await asyncio.gather(*(one(i, url) for i, url in enumerate(urls)))
    return {load.url: load for load in loads}


def _load_main(argv: Sequence[str]) -> None:
    p = argparse.ArgumentParser(prog="fleet_worker load")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("urls", nargs="+")
    a = p.parse_args(argv)
    loads = asyncio.run(_load(a.urls, a.duration, a.concurrency, a.max_tokens))
    a.out.write_text(json.dumps({url: vars(load) for url, load in loads.items()}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        _load_main(sys.argv[2:])
    else:
        sys.exit("usage: python -m tests.e2e.fleet_worker load --out FILE URL...")
