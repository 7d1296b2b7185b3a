"""The torch worker's live levers, as a contract and a client: max batch and KV-cache budget, read and set at run
time over POST /control, plus the stats a controller steers by.

llama-server must restart to change -np or -c; the torch worker applies a new max batch or KV budget at its next
decode step, so a controller can move these levers every few seconds and measure the effect right away. The
models here are shared by the server (agent.worker.torch_server) and the client, so both sides agree on the
fields. This module imports no torch: the daemon and the controller use it without the torch extra installed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from agent.errors import HostError, InputError
from agent.fsio import read_capped
from agent.metrics.prom import parse_text
from agent.worker.replycap import read_reply

METRIC_PREFIX = "torch:"
MAX_REPLY_BYTES = 1 << 20  # the most of a /control or /metrics reply the daemon reads


class ControlUpdate(BaseModel):
    """Body of POST /control. Only the fields sent change; `kv_budget_tokens: null` removes the budget."""

    model_config = ConfigDict(extra="forbid")

    max_batch: int | None = Field(None, ge=1, le=4096, description="most sequences decoded together per step")
    kv_budget_tokens: int | None = Field(None, ge=1, description="cap on the sum over running sequences of "
                                         "prompt + max_tokens (reserved at admission); null = no cap")
    inject_oom: int | None = Field(None, ge=0, le=1000, description="test switch: the next N decode steps raise "
                                   "MemoryError after the forward pass, as a real out-of-memory would")


class OomEvent(BaseModel):
    at: float
    step: int
    phase: str                 # "decode" or "prefill"
    rows: int                  # sequences in the failed step
    max_batch_before: int
    max_batch_after: int
    requeued: int
    failed: int                # requests given up after repeated OOMs at batch 1
    injected: bool
    error: str


class ControlState(BaseModel):
    """GET /control (and the answer to POST /control): the levers as they are, and what they act on."""

    max_batch: int
    kv_budget_tokens: int | None
    running: int
    queued: int
    kv_tokens_used: int        # prompt + generated tokens of the running sequences
    kv_tokens_reserved: int    # prompt + max_tokens of the running sequences (what the budget caps)
    kv_tokens_padded: int      # rows x columns of the batched cache, padding included (what memory holds)
    steps: int
    oom_total: int
    inject_oom_pending: int
    last_ooms: list[OomEvent] = Field(default_factory=list)
    device: str
    dtype: str
    model: str


class TorchWorkerControl:
    """Client for one torch worker's control endpoint, authenticated with the supervisor's bearer token."""

    def __init__(self, base_url: str, token: str | None = None, token_file: Path | None = None,
                 timeout_s: float = 5.0) -> None:
        if token is None:
            if token_file is None:
                raise InputError("the torch worker control client needs a token or a token file")
            token = read_token(token_file)
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {token}"}, trust_env=False)
        self._deadline_s = 2 * timeout_s

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TorchWorkerControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        """The reply body of a 200; read capped (agent/worker/replycap.py): the worker is not trusted."""
        try:
            status, data = read_reply(self._client, method, self.base_url + path, MAX_REPLY_BYTES,
                                      self._deadline_s, json=body)
        except httpx.HTTPError as e:
            raise HostError(f"torch worker at {self.base_url} did not answer {path}: {e}") from e
        except InputError as e:
            raise HostError(f"torch worker at {self.base_url}: {e}") from None
        text = data[:500].decode("utf-8", "replace")
        if status == 422 or status == 400:
            raise InputError(f"torch worker refused the control request: {text}")
        if status != 200:
            raise HostError(f"torch worker {path} answered HTTP {status}: {text[:200]}")
        return data

    def state(self) -> ControlState:
        return ControlState.model_validate_json(self._call("GET", "/control"))

    def update(self, **fields: Any) -> ControlState:
        """Send only the given fields (max_batch, kv_budget_tokens, inject_oom); returns the new state."""
        body = ControlUpdate.model_validate(fields).model_dump(include=set(fields))
        return ControlState.model_validate_json(self._call("POST", "/control", body))

    def set_max_batch(self, n: int) -> ControlState:
        return self.update(max_batch=n)

    def set_kv_budget(self, tokens: int | None) -> ControlState:
        return self.update(kv_budget_tokens=tokens)

    def inject_oom(self, steps: int = 1) -> ControlState:
        return self.update(inject_oom=steps)

    def stats(self) -> dict[str, float]:
        """The worker's own torch:* metrics (no auth needed), by name without the prefix."""
        try:
            status, data = read_reply(self._client, "GET", self.base_url + "/metrics", MAX_REPLY_BYTES,
                                      self._deadline_s)
        except (httpx.HTTPError, InputError) as e:
            raise HostError(f"torch worker at {self.base_url} did not answer /metrics: {e}") from e
        if status != 200:
            raise HostError(f"torch worker /metrics answered HTTP {status}")
        return parse_torch_metrics(data.decode("utf-8", "replace"))


def parse_torch_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, fam in parse_text(text, source="torch worker /metrics").items():
        if not name.startswith(METRIC_PREFIX):
            continue
        for sample in fam.samples:
            if not sample.labels and sample.name == name and not math.isnan(sample.value):
                out[name[len(METRIC_PREFIX):]] = sample.value
    return out


def read_token(path: Path) -> str:
    """The bearer token from a file the supervisor wrote; refuses an empty or group/world-readable file."""
    try:
        st = path.stat()
        token = read_capped(path, 4096).decode(errors="replace").strip()
    except OSError as e:
        raise InputError(f"cannot read control token: {e.strerror}", path=path) from e
    if st.st_mode & 0o077:
        raise InputError("control token file must not be readable by group or others (chmod 600)", path=path)
    if not token:
        raise InputError("control token file is empty", path=path)
    return token
