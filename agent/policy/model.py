"""The resolved policy model (pydantic). The loader (agent/policy/loader.py) merges `extends:`, drops sections
whose `when:` is false, evaluates computed values, then validates the result against these models, mapping any
error back to file:line and the field's dotted path.

After resolution a Policy holds only concrete values: tuners never see expressions or conditions.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from agent.policy.controller_spec import ControllerSpec
from agent.policy.shapes import DeviceGlob, ModelRegex, NameGlob, Token
from agent.policy.sysctl_rules import sysctl_entry_problem, sysctl_value_problem

CMDLINE_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")  # fullmatch: `$` would let a final newline in
# A pool count nobody needs (32 TiB of 2M pages): absurd numbers fail validation, before any host memory check.
MAX_HUGEPAGES = 1 << 24
MAX_NUMA_NODE = 1023  # the kernel's MAX_NUMNODES is at most 1024
MAX_GPU_WATTS = 100_000  # far above any GPU's limit; bounds the arithmetic done on the value
MAX_GPU_MHZ = 100_000
MAX_THREADS = 4096  # more than any host's CPUs; bounds what reaches llama-server's argv
MAX_CACHE_REUSE = 1 << 20  # tokens; a chunk longer than any context disables reuse, no need for more
MAX_CACHE_RAM_MIB = 1 << 24  # 16 TiB
DEFAULT_HUGEPAGE_MEMORY_PCT = 90.0
# A hostname (RFC 1123 labels) or an IPv4/IPv6 literal: never a space, never a leading '-' that argv would
# read as a flag. Whether a remote address is allowed is the daemon config's call (worker.allow_remote).
# fullmatch: `$` would let a final newline in.
HOSTNAME_RE = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                         r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HugepageSpec(Section):
    size: Literal["2M", "1G"] = Field(description="page size")
    count: int = Field(ge=0, le=MAX_HUGEPAGES, description="pages wanted in the pool (global, or on `node`)")
    node: int | None = Field(None, ge=0, le=MAX_NUMA_NODE,
                             description="NUMA node for a per-node pool; omit for the global pool")
    max_memory_pct: float | None = Field(
        None, gt=0, lt=100, description=f"the pools of this scope (the node, or the host) may take at most this "
        f"share of its memory (default {DEFAULT_HUGEPAGE_MEMORY_PCT:g}); needs `why`")
    for_weights: bool = Field(False, description="this pool holds the worker's weights (worker.weights.backing: "
                              "hugetlbfs): planned only when the worker can map them from it, else plan says why "
                              "and reserves nothing")
    why: str | None = None

    @model_validator(mode="after")
    def _override_needs_why(self) -> HugepageSpec:
        if self.max_memory_pct is not None and not (self.why or "").strip():
            raise ValueError("max_memory_pct needs a `why:` saying why this host may give that much memory to "
                             "hugepages")
        return self


class ThpSpec(Section):
    enabled: Literal["always", "madvise", "never"] | None = None
    defrag: Literal["always", "defer", "defer+madvise", "madvise", "never"] | None = None


class CpuSpec(Section):
    governor: Token | None = Field(None, description="cpufreq scaling governor, e.g. performance")
    energy_performance_preference: Token | None = Field(None, description="intel_pstate/amd_pstate EPP")


class BlockMatch(Section):
    name: DeviceGlob | None = Field(None, description="glob on the kernel name, e.g. nvme*")
    kind: Token | None = Field(None, description="nvme, virtio, scsi, sata, loop, ...")
    model: ModelRegex | None = Field(None, description="regular expression on the device model")
    rotational: bool | None = None


class BlockSpec(Section):
    match: BlockMatch
    read_ahead_kb: int | None = Field(None, ge=0, le=1 << 20)
    scheduler: Token | None = None
    nr_requests: int | None = Field(None, ge=1, le=1 << 16)
    udev_rule: bool = Field(False, description="also write a udev rule so the setting survives hot-plug/reboot")


class GpuSelect(Section):
    index: int | None = Field(None, ge=0, le=1023)
    uuid: Token | None = None
    name: NameGlob | None = Field(None, description="glob on the GPU name, e.g. '*H100*'")
    all: bool = False


class ClockRange(Section):
    min_mhz: int = Field(ge=0, le=MAX_GPU_MHZ)
    max_mhz: int = Field(ge=0, le=MAX_GPU_MHZ)

    @model_validator(mode="after")
    def _ordered(self) -> ClockRange:
        if self.min_mhz > self.max_mhz:
            raise ValueError("min_mhz must not exceed max_mhz")
        return self


ClockSetting = ClockRange | Literal["max", "base"] | str  # str: a percentage of max such as "90%"


class GpuSpec(Section):
    select: GpuSelect = Field(default_factory=lambda: GpuSelect(all=True))
    locked_clocks: ClockSetting | None = None
    memory_locked_clocks: ClockSetting | None = None
    power_limit_w: Annotated[int, Field(ge=1, le=MAX_GPU_WATTS)] | str | None = Field(
        None, description="watts, or a percentage of the default e.g. '90%'")
    persistence_mode: bool | None = None


class WorkerPlacement(Section):
    mode: Literal["auto", "explicit", "none"] = "auto"
    cpus: list[int] | None = None
    numa_node: int | None = Field(None, ge=0)


class WeightsSpec(Section):
    """Where the worker keeps the model's weights. llama.cpp: see `backing`. torch engine: `anon` packs them into
    one THP arena, `hugetlbfs` into the reserved 2 MiB pool, `page_cache` leaves torch's own allocations."""

    backing: Literal["page_cache", "hugetlbfs", "anon"] = Field(
        "page_cache", description="where the worker's weights live: page_cache (llama-server maps the GGUF), "
        "hugetlbfs (the daemon stages the GGUF in a hugetlbfs mount backed by the policy's `for_weights` pool and "
        "the worker maps the copy), anon (llama-server reads them into its own memory: --load-mode none)")
    mlock: bool = Field(False, description="lock the weights in RAM (llama-server --load-mode mlock/mmap+mlock) "
                        "where the memlock limit allows; hugetlbfs pages are never swapped and need no lock")


class WorkerSpec(Section):
    engine: Literal["llamacpp", "torch", "command"] = "llamacpp"
    model: str = Field("default", description="a GGUF path, or `default` for the bundled SmolLM2-135M")
    host: str = Field("127.0.0.1", description="address the worker listens on: loopback unless the daemon config "
                      "sets worker.allow_remote: true")
    port: int = Field(8081, ge=1, le=65535)
    binary: str | None = Field(None, description="llama-server path (default: the venv's, then PATH)")
    threads: int | None = Field(None, ge=1, le=MAX_THREADS)
    threads_batch: int | None = Field(None, ge=1, le=MAX_THREADS)
    ctx: int | None = Field(None, ge=64)
    parallel: int | None = Field(None, ge=1, le=512)
    batch: int | None = Field(None, ge=1)
    ubatch: int | None = Field(None, ge=1)
    cache_type_k: Token | None = None
    cache_type_v: Token | None = None
    gpu_layers: int | None = Field(None, ge=0)
    gpu: int | None = Field(None, ge=0, description="GPU index the worker offloads to (made the only visible "
                            "device, by UUID); default GPU 0 when gpu_layers is not 0")
    flash_attn: bool | None = Field(None, description="llama.cpp -fa on/off (unset: auto); a quantized V cache "
                                    "needs it on, so it is turned on for one unless set to false (then refused)")
    cache_reuse: int | None = Field(None, ge=0, le=MAX_CACHE_REUSE, description="llama.cpp --cache-reuse N: "
                                    "smallest chunk (tokens) reused from a slot's cache by KV shifting")
    cache_ram_mib: int | None = Field(None, ge=-1, le=MAX_CACHE_RAM_MIB, description="llama.cpp --cache-ram: "
                                      "host-memory prompt cache across slots, MiB (0 off, -1 no limit)")
    cache_prompt: bool | None = Field(None, description="gateway: set cache_prompt on completion requests that do "
                                      "not say (llama.cpp reuses the slot's cached prefix)")
    slot_affinity: bool = Field(False, description="gateway: keep a conversation (X-Session-Id, else its system "
                                "prompt + first user message) on one llama.cpp slot via id_slot")
    threads_batch_max: int | None = Field(None, ge=1, le=MAX_THREADS, description="let the controller move "
                                          "threads_batch (prefill) apart from threads, up to this many (and the "
                                          "worker's CPUs)")
    dtype: Literal["fp32", "bf16", "fp16"] | None = Field(None, description="torch engine only")
    extra_args: list[str] = Field(default_factory=list)
    placement: WorkerPlacement = Field(default_factory=WorkerPlacement)
    argv: list[str] | None = Field(None, description="command engine: the server's argv")
    health_url: str | None = None
    metrics_url: str | None = None
    prewarm: bool = Field(False, description="read the model into the page cache before start")
    weights: WeightsSpec = Field(default_factory=WeightsSpec)

    @field_validator("host")
    @classmethod
    def _host_shape(cls, v: str) -> str:
        try:
            if "%" in v:  # an IPv6 scope id may hold any text (spaces, newlines): not needed for a bind address
                raise ValueError
            ipaddress.ip_address(v)
        except ValueError:
            if not HOSTNAME_RE.fullmatch(v):
                raise ValueError(f"{v[:80]!r} is not an IP address or a host name") from None
        return v

    @model_validator(mode="after")
    def _command_needs_argv(self) -> WorkerSpec:
        if self.engine == "command" and not self.argv:
            raise ValueError("engine 'command' needs argv")
        return self


class SloSpec(Section):
    ttft_p95_ms: float | None = Field(None, gt=0)
    itl_p95_ms: float | None = Field(None, gt=0)
    memory_headroom_pct: float = Field(10.0, ge=0, le=90)
    shed: bool = Field(False, description="gateway: answer 503 + Retry-After at once when a new request's predicted "
                       "wait for admission (queued x recent service time / limit) exceeds ttft_p95_ms, "
                       "and to a queued request once its wait alone reached ttft_p95_ms")

    @model_validator(mode="after")
    def _shed_needs_ttft(self) -> SloSpec:
        if self.shed and self.ttft_p95_ms is None:
            raise ValueError("shed needs ttft_p95_ms (the wait it sheds above)")
        return self


class Policy(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    extends: str | list[str] | None = None
    sysctl: dict[str, int | str] = Field(
        default_factory=dict,
        description="key -> exact value, or '>=N' (at least) / '<=N' (at most)")
    hugepages: list[HugepageSpec] = Field(default_factory=list)
    thp: ThpSpec | None = None
    cpu: CpuSpec | None = None
    block: list[BlockSpec] = Field(default_factory=list)
    gpu: list[GpuSpec] = Field(default_factory=list)
    kernel_cmdline: dict[str, str | None] = Field(
        default_factory=dict, description="boot parameters advised (reboot required, never applied)")
    worker: WorkerSpec | None = None
    slo: SloSpec | None = None
    controller: ControllerSpec | None = None

    @field_validator("sysctl", mode="before")
    @classmethod
    def _sysctl_no_booleans(cls, v: object) -> object:
        # Before pydantic's lax int coercion turns YAML `true` into 1, which would hide the mistake.
        if isinstance(v, dict):
            for key, value in v.items():
                if isinstance(value, bool):
                    raise PydanticCustomError("sysctl_entry", "{problem}",
                                              {"problem": sysctl_value_problem(key, value), "key": key})
        return v

    @field_validator("sysctl")
    @classmethod
    def _sysctl_keys(cls, v: dict[str, int | str]) -> dict[str, int | str]:
        for key, value in v.items():
            problem = sysctl_entry_problem(key, value)
            if problem:
                # ctx "key" lets the policy loader point at the offending entry's line, not the section's.
                raise PydanticCustomError("sysctl_entry", "{problem}", {"problem": problem, "key": key})
        return v

    @field_validator("kernel_cmdline")
    @classmethod
    def _cmdline_params(cls, v: dict[str, str | None]) -> dict[str, str | None]:
        # These are rendered into boot-loader advice: one printable token per parameter, nothing smuggled in.
        for key, value in v.items():
            if not CMDLINE_KEY_RE.fullmatch(key):
                raise PydanticCustomError("cmdline_param", "{problem}", {
                    "problem": f"invalid boot parameter name {key!r}", "key": key})
            if value is not None and (not value.isprintable() or any(c.isspace() for c in value)):
                raise PydanticCustomError("cmdline_param", "{problem}", {
                    "problem": f"{key}: the value must be one printable token without spaces", "key": key})
        return v

    @field_validator("hugepages")
    @classmethod
    def _one_spec_per_pool(cls, v: list[HugepageSpec]) -> list[HugepageSpec]:
        seen = set()
        for index, spec in enumerate(v):
            pool = (spec.size, spec.node)
            if pool in seen:
                problem = f"hugepages: pool size={spec.size} node={spec.node} given twice"
                raise PydanticCustomError("hugepage_pool_twice", "{problem}", {"problem": problem, "index": index})
            seen.add(pool)
        return v
