"""Start the real llama-server briefly with `-lv 4` and return its own memory accounting (engine_memory).

The server loads the model, allocates its caches for the given -c/-np/-ctk/-ctv, prints its figures, and is
stopped once it says it listens (or it exits, or the deadline passes). Its log goes to a file in a private
temporary directory, read back whole; nothing else of the host is touched.
"""

from __future__ import annotations

import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from agent.errors import InputError
from agent.worker.engine_memory import EngineMemory, parse_engine_memory
from agent.worker.kv_memory import CACHE_TYPES
from agent.worker.llamacpp_bin import LlamaServerBinary

READY = re.compile(r"llama_server: listening on|server is listening")
POLL_S = 0.2
STOP_GRACE_S = 10.0
MAX_CTX = 1 << 22
MAX_PARALLEL = 256
MAX_LOG_BYTES = 16 * 1024 * 1024


class ProbeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ctx: int
    parallel: int = 1
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    threads: int = 1
    swa_full: bool = False


def probe_argv(binary: LlamaServerBinary, model: Path, port: int, s: ProbeSettings) -> list[str]:
    """llama-server's argv for one probe; every value checked before it reaches the argv."""
    if not 1 <= s.ctx <= MAX_CTX:
        raise InputError(f"ctx must be 1..{MAX_CTX}", field="ctx")
    if not 1 <= s.parallel <= MAX_PARALLEL:
        raise InputError(f"parallel must be 1..{MAX_PARALLEL}", field="parallel")
    for name, value in (("cache_type_k", s.cache_type_k), ("cache_type_v", s.cache_type_v)):
        if value not in CACHE_TYPES:
            raise InputError(f"unknown cache type {value!r}", field=name)
    if not 1 <= port <= 65535 or not 1 <= s.threads <= 256:
        raise InputError("port must be 1..65535 and threads 1..256", field="port")
    argv = [str(binary.path), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", str(s.ctx),
            "-np", str(s.parallel), "-ctk", s.cache_type_k, "-ctv", s.cache_type_v, "-t", str(s.threads),
            "-lv", "4", "--no-warmup"]
    if s.cache_type_v != "f16":
        argv += ["-fa", "on"]  # a quantized V cache needs flash attention
    if s.swa_full:
        argv.append("--swa-full")
    return argv


def probe_engine(binary: LlamaServerBinary, model: Path, port: int, settings: ProbeSettings,
                 timeout_s: float = 120.0) -> tuple[EngineMemory, str]:
    """Run llama-server until it is ready (or exits); return its parsed figures and the raw log."""
    argv = probe_argv(binary, model, port, settings)
    with tempfile.TemporaryDirectory(prefix="hosttune-probe-") as tmp:
        log_path = Path(tmp) / "llama-server.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=binary.env())
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and proc.poll() is None:
                if READY.search(_read(log_path)):
                    break
                time.sleep(POLL_S)
        finally:
            _stop(proc)
        text = _read(log_path)
    memory = parse_engine_memory(text)
    if not memory.caches:
        tail = "\n".join(text.splitlines()[-5:])
        raise InputError(f"llama-server printed no cache sizes (exit {proc.returncode}): {tail[-400:]}")
    return memory, text


def _read(path: Path) -> str:
    with path.open("rb") as f:
        return f.read(MAX_LOG_BYTES).decode(errors="replace")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
