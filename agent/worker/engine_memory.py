"""The engine's own memory accounting, read from llama-server's start-up log (`-lv 4`).

llama.cpp prints, for each cache it allocates:
  llama_kv_cache_iswa: creating non-SWA KV cache, size = 2048 cells
  llama_kv_cache: size =   12.00 MiB (  2048 cells,   3 layers,  2/2 seqs), K (f16):    6.00 MiB, V (f16): ...
  llama_memory_recurrent: size = 1.50 MiB (1 cells, 24 layers, 1 seqs 0 rs_seq), R (f32): ..., S (f32): ...
the context it settled on (`llama_context: n_ctx = 4096`, `n_ctx_seq`, `n_seq_max`), its compute buffers
(`sched_reserve: CPU compute buffer size = 15.51 MiB`) and, at trace level, common_memory_breakdown_print's table
(`| - Host | 161 = 98 + 42 + 20 |`: self = model + context + compute, whole MiB). Pure: text in, figures out.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

MIB = 1024 * 1024

_KV_SIZE = re.compile(
    r"llama_kv_cache: size = *([\d.]+) MiB \( *(\d+) cells, *(\d+) layers, *(\d+)/(\d+) seqs\), "
    r"K \((\w+)\): *([\d.]+) MiB, V \((\w+)\): *([\d.]+) MiB")
_RS_SIZE = re.compile(
    r"llama_memory_recurrent: size = *([\d.]+) MiB \( *(\d+) cells, *(\d+) layers, *(\d+) seqs *(\d+) rs_seq\)")
_ISWA = re.compile(r"llama_kv_cache_iswa: creating +(non-SWA|SWA) KV cache, size = (\d+) cells")
_CTX_PARAM = re.compile(r"llama_context: (n_ctx|n_ctx_seq|n_seq_max|n_batch|n_ubatch) *= *(\d+)")
_COMPUTE = re.compile(r"(?:llama_context|sched_reserve): *(\S+) compute buffer size = *([\d.]+) MiB")
# common_memory_breakdown_print rows: "| - Host | self = model + context + compute |" and, for a device,
# "| - CUDA0 (H100) | total = free + (self = model + context + compute) + unaccounted |" (whole MiB).
_ROW_HOST = re.compile(r"memory_breakdown_print: \| +- (.+?) +\| *(\d+) *= *(\d+) *\+ *(\d+) *\+ *(\d+) *\|")
_ROW_DEVICE = re.compile(r"memory_breakdown_print: \| +- (.+?) +\| *\d+ *= *\d+ *\+ *\( *(\d+) *= *(\d+) *\+ *(\d+) *"
                         r"\+ *(\d+) *\) *\+ *-?\d+ *\|")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineCache(Model):
    kind: str = Field(description="full, swa or recurrent")
    mib: float = Field(description="as printed, 2 decimals")
    cells: int
    layers: int
    seqs: int
    streams: int
    type_k: str | None = None
    type_v: str | None = None


class BreakdownRow(Model):
    name: str = Field(description="Host, a device, or a buffer type")
    self_mib: int
    model_mib: int
    context_mib: int
    compute_mib: int


class EngineMemory(Model):
    caches: list[EngineCache]
    n_ctx: int | None = None
    n_ctx_seq: int | None = None
    n_seq_max: int | None = None
    n_ubatch: int | None = None
    compute_mib: dict[str, float] = Field(default_factory=dict, description="compute buffers per backend")
    breakdown: list[BreakdownRow] = Field(default_factory=list, description="the last table printed")

    @property
    def context_bytes(self) -> int:
        """KV caches plus recurrent state, from the per-cache lines (10 KiB resolution)."""
        return round(sum(c.mib for c in self.caches) * MIB)

    def bytes_of(self, kind: str) -> int:
        return round(sum(c.mib for c in self.caches if c.kind == kind) * MIB)


def parse_engine_memory(text: str) -> EngineMemory:
    """Figures of one llama-server start (the first context it created; a later table replaces the first)."""
    caches: list[EngineCache] = []
    params: dict[str, int] = {}
    compute: dict[str, float] = {}
    table: list[BreakdownRow] = []
    pending_kind = "full"
    table_open = False
    for line in text.splitlines():
        if m := _ISWA.search(line):
            pending_kind = "full" if m.group(1) == "non-SWA" else "swa"
        elif m := _KV_SIZE.search(line):
            caches.append(EngineCache(kind=pending_kind, mib=float(m.group(1)), cells=int(m.group(2)),
                                      layers=int(m.group(3)), seqs=int(m.group(4)), streams=int(m.group(5)),
                                      type_k=m.group(6), type_v=m.group(8)))
            pending_kind = "full"
        elif m := _RS_SIZE.search(line):
            caches.append(EngineCache(kind="recurrent", mib=float(m.group(1)), cells=int(m.group(2)),
                                      layers=int(m.group(3)), seqs=int(m.group(4)), streams=1))
        elif m := _CTX_PARAM.search(line):
            params.setdefault(m.group(1), int(m.group(2)))
        elif m := _COMPUTE.search(line):
            compute.setdefault(m.group(1), float(m.group(2)))
        elif "memory_breakdown_print: | memory breakdown" in line:
            table_open, table = True, []
        elif table_open and (m := _ROW_HOST.search(line) or _ROW_DEVICE.search(line)):
            table.append(BreakdownRow(name=m.group(1).strip(), self_mib=int(m.group(2)), model_mib=int(m.group(3)),
                                      context_mib=int(m.group(4)), compute_mib=int(m.group(5))))
    first = _first_context(caches)
    return EngineMemory(caches=first, n_ctx=params.get("n_ctx"), n_ctx_seq=params.get("n_ctx_seq"),
                        n_seq_max=params.get("n_seq_max"), n_ubatch=params.get("n_ubatch"), compute_mib=compute,
                        breakdown=table)


def _first_context(caches: list[EngineCache]) -> list[EngineCache]:
    """The caches of the first context: the fitter may build a throwaway context first with the same caches;
    a repeated kind starts the next context."""
    seen: set[str] = set()
    first: list[EngineCache] = []
    for cache in caches:
        if cache.kind in seen:
            break
        seen.add(cache.kind)
        first.append(cache)
    return first
