"""Engine adapter for `worker: {engine: torch}`: runs agent.worker.torch_server with this interpreter, placed and
bound like any worker, health at /health and metrics at /metrics.

Policy knobs map onto the torch worker's live levers: `parallel` -> --max-batch, `ctx` -> --kv-budget-tokens.
Those two change at run time through POST /control (authenticated with a token this adapter writes, mode 0600,
into a private directory), so restart_needed() leaves them out; everything else (model, dtype, threads, port, ...)
needs a restart. control_client() gives the controller a client for the levers.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from agent.errors import InputError
from agent.policy.model import WorkerSpec
from agent.worker.binding import BindPreference, plan_binding
from agent.worker.launch import Launch, base_url, changed_fields
from agent.worker.placement import Placement
from agent.worker.privdrop import RunAs, worker_env
from agent.worker.torch_control import TorchWorkerControl

LIVE_KNOBS = frozenset({"parallel", "ctx"})
RESERVED_FLAGS = {"--model", "--host", "--port", "--control-token-file", "--max-batch", "--kv-budget-tokens",
                  "--dtype", "--threads", "--device", "--weights-arena", "--mlock-weights"}
# worker.weights.backing -> the torch server's --weights-arena (agent/worker/torch_server/arena.py)
WEIGHTS_ARENA = {"anon": "thp", "hugetlbfs": "hugetlb"}
TOKEN_FILE = "torch-control.token"


class TorchEngine:
    name = "torch"

    def __init__(self, prefer_binding: BindPreference = "auto", parent_death_signal: int | None = signal.SIGTERM,
                 token_dir: Path | None = None, python: str = sys.executable, run_as: RunAs | None = None) -> None:
        self._run_as = run_as
        self._prefer: BindPreference = prefer_binding
        self._death_signal = parent_death_signal
        self._token_dir = token_dir
        self._token_file: Path | None = None
        self._python = python

    def token_file(self) -> Path:
        """The control token, written once per adapter and kept across worker restarts."""
        if self._token_file is None:
            if self._token_dir is None:
                self._token_dir = Path(tempfile.mkdtemp(prefix="hosttune-torch-"))
                atexit.register(shutil.rmtree, self._token_dir, True)
            self._token_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self._token_dir / TOKEN_FILE
            # O_EXCL|O_NOFOLLOW and f-calls on the descriptor: nothing here follows a name the worker user could
            # have replaced (the directory becomes theirs below; chown(path) after that once handed a symlink
            # planted there, e.g. to /etc/shadow, root's chown).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a given token_dir may hold an earlier token (unlink follows no link)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                os.fchmod(fd, 0o600)
                if self._run_as is not None:  # the worker user reads it; still nobody else
                    os.fchown(fd, self._run_as.uid, self._run_as.gid)
                f.write(secrets.token_urlsafe(32) + "\n")
            if self._run_as is not None:
                os.chown(self._token_dir, self._run_as.uid, self._run_as.gid, follow_symlinks=False)
            self._token_file = path
        return self._token_file

    def argv(self, spec: WorkerSpec, model: Path, placement: Placement | None) -> list[str]:
        for i, arg in enumerate(spec.extra_args):
            if arg.split("=", 1)[0] in RESERVED_FLAGS:
                raise InputError(f"{arg} is set by hosttune from the worker spec; use the matching worker field",
                                 field=f"worker.extra_args[{i}]")
        args = ["-P", "-m", "agent.worker.torch_server", "--model", str(model), "--host", spec.host, "--port",
                str(spec.port), "--control-token-file", str(self.token_file())]
        if spec.dtype is not None:
            args += ["--dtype", spec.dtype]
        if spec.parallel is not None:
            args += ["--max-batch", str(spec.parallel)]
        if spec.ctx is not None:
            args += ["--kv-budget-tokens", str(spec.ctx)]
        threads = spec.threads if spec.threads is not None else (placement.threads if placement else None)
        if threads is not None:
            args += ["--threads", str(threads)]
        if placement is not None and placement.gpu is not None:
            args += ["--device", "cuda"]
        if spec.weights.backing in WEIGHTS_ARENA:
            args += ["--weights-arena", WEIGHTS_ARENA[spec.weights.backing]]
        if spec.weights.mlock:
            if spec.weights.backing not in WEIGHTS_ARENA:
                raise InputError("the torch engine locks only an arena: set weights.backing anon or hugetlbfs",
                                 field="worker.weights.mlock")
            args += ["--mlock-weights"]
        return [*args, *spec.extra_args]

    def launch(self, spec: WorkerSpec, model: Path | None, placement: Placement | None) -> Launch:
        if model is None:
            raise InputError("the torch engine needs a model (a GGUF file, or `default`)", field="worker.model")
        binding = plan_binding(placement, prefer=self._prefer, parent_death_signal=self._death_signal,
                               run_as=self._run_as)
        env = worker_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
        if placement is not None and placement.gpu_uuid:
            env["CUDA_VISIBLE_DEVICES"] = placement.gpu_uuid
        url = base_url(spec.host, spec.port)
        return Launch(engine=self.name, argv=[*binding.prefix, self._python, *self.argv(spec, model, placement)],
                      env=env, base_url=url, health_url=f"{url}/health", metrics_url=f"{url}/metrics", model=model,
                      placement=placement, binding=binding)

    def restart_needed(self, old: WorkerSpec, new: WorkerSpec) -> list[str]:
        return [f for f in changed_fields(old, new) if f not in LIVE_KNOBS]

    def control_client(self, spec: WorkerSpec, timeout_s: float = 5.0) -> TorchWorkerControl:
        """Client for the live levers of the worker this adapter launched for `spec`."""
        return TorchWorkerControl(base_url(spec.host, spec.port), token_file=self.token_file(), timeout_s=timeout_s)

    def live_update(self, old: WorkerSpec, new: WorkerSpec) -> dict[str, int | None]:
        """The POST /control fields that carry old -> new for the live knobs (empty when neither changed)."""
        out: dict[str, int | None] = {}
        if new.parallel != old.parallel:
            out["max_batch"] = new.parallel or 8
        if new.ctx != old.ctx:
            out["kv_budget_tokens"] = new.ctx
        return out
