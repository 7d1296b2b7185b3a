"""Engine adapters: a WorkerSpec (+ placement) -> the exact argv, environment and URLs of one worker process
(a Launch, agent.worker.launch). llama.cpp and user commands are here, torch in torch_engine.py; engine_for picks.

An adapter also says which knobs need a restart to change. For llama.cpp that is every knob: llama-server reads
-c/-np/-b/-ub/-ctk/-ctv/-t/--numa once at start and nothing changes them live.
"""

from __future__ import annotations

import signal
from pathlib import Path

from agent.errors import InputError
from agent.policy.model import WorkerSpec
from agent.worker.binding import BindPreference, plan_binding
from agent.worker.fit import check_cache_type
from agent.worker.launch import Engine, Launch, base_url, changed_fields
from agent.worker.llamacpp_bin import LlamaServerBinary, find_llama_server
from agent.worker.placement import Placement
from agent.worker.privdrop import RunAs, worker_env
from agent.worker.torch_engine import TorchEngine  # imports no torch; the worker process does

# Fields of WorkerSpec that are engine knobs (the controller may change them; each needs a restart here).
KNOBS: tuple[str, ...] = ("threads", "threads_batch", "ctx", "parallel", "batch", "ubatch", "cache_type_k",
                          "cache_type_v", "gpu_layers", "flash_attn", "cache_reuse", "cache_ram_mib", "extra_args")
# Slots llama-server serves with -np left unset ("auto"), in the llama.cpp hosttune installs.
LLAMACPP_AUTO_SLOTS = 4
# Flags hosttune owns: a user passing them in extra_args would contradict the spec or the placement.
RESERVED_FLAGS = {"-m", "--model", "--host", "--port", "--metrics", "-t", "--threads", "-tb", "--threads-batch",
                  "-c", "--ctx-size", "-np", "--parallel", "--numa", "-fa", "--flash-attn", "--cache-reuse",
                  "-cram", "--cache-ram", "-ctk", "--cache-type-k", "-ctv", "--cache-type-v", "-lm",
                  "--load-mode", "--mlock", "--no-mmap"}
# Cache types llama.cpp stores as f32/f16/bf16 rows; every other (quantized) V cache needs flash attention.
FLOAT_CACHE_TYPES = frozenset({"f32", "f16", "bf16"})
# worker.weights (backing, mlock) -> llama-server --load-mode; None: llama.cpp's default (auto: mmap)
LOAD_MODES: dict[tuple[str, bool], str | None] = {
    ("page_cache", False): None, ("page_cache", True): "mmap+mlock",
    # plain mmap is llama-server's default: emit nothing, so builds without --load-mode still start; hugetlb pages
    # are never swapped, so mlock adds nothing either
    ("hugetlbfs", False): None, ("hugetlbfs", True): None,
    ("anon", False): "none", ("anon", True): "mlock"}


def _gpu_env(env: dict[str, str], placement: Placement | None) -> dict[str, str]:
    if placement is not None and placement.gpu_uuid:
        env["CUDA_VISIBLE_DEVICES"] = placement.gpu_uuid
    return env


class LlamaCppEngine:
    """llama.cpp's llama-server, with --metrics on and --host/--port always explicit."""

    name = "llamacpp"

    def __init__(self, binary: LlamaServerBinary | None = None, prefer_binding: BindPreference = "auto",
                 parent_death_signal: int | None = signal.SIGTERM, run_as: RunAs | None = None) -> None:
        self._binary = binary
        self._prefer: BindPreference = prefer_binding
        self._death_signal = parent_death_signal
        self._run_as = run_as

    def binary(self, spec: WorkerSpec) -> LlamaServerBinary:
        if self._binary is None:
            self._binary = find_llama_server(spec.binary)
        return self._binary

    def argv(self, spec: WorkerSpec, model: Path, placement: Placement | None) -> list[str]:
        """llama-server arguments (without the binary) for spec; knobs left unset keep llama.cpp's defaults."""
        for i, arg in enumerate(spec.extra_args):
            if arg.split("=", 1)[0] in RESERVED_FLAGS:
                raise InputError(f"{arg} is set by hosttune from the worker spec; use the matching worker field",
                                 field=f"worker.extra_args[{i}]")
        args = ["-m", str(model), "--host", spec.host, "--port", str(spec.port), "--metrics"]
        threads = spec.threads if spec.threads is not None else (placement.threads if placement else None)
        if threads is not None:
            args += ["-t", str(threads)]
        if spec.threads_batch is not None:
            args += ["-tb", str(spec.threads_batch)]
        if spec.ctx is not None:
            args += ["-c", str(spec.ctx)]
        if spec.parallel is not None:
            args += ["-np", str(spec.parallel)]
        if spec.batch is not None:
            args += ["-b", str(spec.batch)]
        if spec.ubatch is not None:
            if spec.batch is not None and spec.ubatch > spec.batch:
                raise InputError(f"ubatch {spec.ubatch} exceeds batch {spec.batch}", field="worker.ubatch")
            args += ["-ub", str(spec.ubatch)]
        if spec.cache_type_k is not None:
            args += ["-ctk", check_cache_type(spec.cache_type_k, "worker.cache_type_k")]
        flash_attn = spec.flash_attn
        if spec.cache_type_v is not None:
            args += ["-ctv", check_cache_type(spec.cache_type_v, "worker.cache_type_v")]
            if spec.cache_type_v not in FLOAT_CACHE_TYPES:
                if flash_attn is False:
                    raise InputError(f"a {spec.cache_type_v} V cache needs flash attention: leave flash_attn unset "
                                     "or true", field="worker.flash_attn")
                flash_attn = True  # "auto" may resolve to off (some GPU back-ends) and llama-server then refuses
        if spec.gpu_layers is not None:
            args += ["-ngl", str(spec.gpu_layers)]
        if flash_attn is not None:
            args += ["-fa", "on" if flash_attn else "off"]
        if spec.cache_reuse is not None:
            args += ["--cache-reuse", str(spec.cache_reuse)]
        if spec.cache_ram_mib is not None:
            args += ["--cache-ram", str(spec.cache_ram_mib)]
        load_mode = LOAD_MODES[(spec.weights.backing, spec.weights.mlock)]
        if load_mode is not None:
            args += ["--load-mode", load_mode]
        if placement is not None and placement.bound:
            # Use the CPU map the binding gives the process instead of llama.cpp's own NUMA guesses.
            args += ["--numa", "numactl"]
        return [*args, *spec.extra_args]

    def launch(self, spec: WorkerSpec, model: Path | None, placement: Placement | None) -> Launch:
        if model is None:
            raise InputError("the llamacpp engine needs a model file", field="worker.model")
        binary = self.binary(spec)
        binding = plan_binding(placement, prefer=self._prefer, parent_death_signal=self._death_signal,
                               run_as=self._run_as)
        argv = [*binding.prefix, str(binary.path), *self.argv(spec, model, placement)]
        url = base_url(spec.host, spec.port)
        return Launch(engine=self.name, argv=argv, env=_gpu_env(binary.env(worker_env()), placement), base_url=url,
                      health_url=f"{url}/health", metrics_url=f"{url}/metrics", model=model, placement=placement,
                      binding=binding)

    def restart_needed(self, old: WorkerSpec, new: WorkerSpec) -> list[str]:
        return changed_fields(old, new)  # every llama-server setting is read once at start


class CommandEngine:
    """Any user-supplied server: argv as given, readiness and metrics from the URLs in the spec."""

    name = "command"

    def __init__(self, prefer_binding: BindPreference = "auto",
                 parent_death_signal: int | None = signal.SIGTERM, run_as: RunAs | None = None) -> None:
        self._prefer: BindPreference = prefer_binding
        self._death_signal = parent_death_signal
        self._run_as = run_as

    def launch(self, spec: WorkerSpec, model: Path | None, placement: Placement | None) -> Launch:
        if not spec.argv:
            raise InputError("engine 'command' needs argv", field="worker.argv")
        binding = plan_binding(placement, prefer=self._prefer, parent_death_signal=self._death_signal,
                               run_as=self._run_as)
        url = base_url(spec.host, spec.port)
        return Launch(engine=self.name, argv=[*binding.prefix, *spec.argv], env=_gpu_env(worker_env(), placement),
                      base_url=url, health_url=spec.health_url or f"{url}/health", metrics_url=spec.metrics_url,
                      model=model, placement=placement, binding=binding)

    def restart_needed(self, old: WorkerSpec, new: WorkerSpec) -> list[str]:
        return changed_fields(old, new)


def engine_for(spec: WorkerSpec, prefer_binding: BindPreference = "auto", run_as: RunAs | None = None) -> Engine:
    if spec.engine == "llamacpp":
        return LlamaCppEngine(prefer_binding=prefer_binding, run_as=run_as)
    if spec.engine == "command":
        return CommandEngine(prefer_binding=prefer_binding, run_as=run_as)
    if spec.engine == "torch":
        return TorchEngine(prefer_binding=prefer_binding, run_as=run_as)
    raise InputError(f"unknown engine {spec.engine}", field="worker.engine")
