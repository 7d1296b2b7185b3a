"""The torch worker's weights in huge pages: every parameter copied into one anonymous arena and re-pointed at it.

Torch allocates each tensor on its own; with THP_MEM_ALLOC_ENABLE=1 it aligns allocations of 2 MiB and more and
madvises them, but a small model's many 1-4 MiB matrices then get at most a page or two each, and tensors under
2 MiB none (measured on SmolLM2-135M: about half the weight bytes). One arena, 2 MiB-aligned and madvised before
the first touch, puts all of them in huge pages:
- `thp`: a private anonymous mapping with MADV_HUGEPAGE (THP `madvise` or `always`; under `never` it stays in
  4 KiB pages and the worker's smaps_rollup says so);
- `hugetlb`: MAP_HUGETLB from the reserved 2 MiB pool; when the pool is too small the arena falls back to `thp`
  and says why.
`lock` mlocks the arena when RLIMIT_MEMLOCK allows (else it says why and goes on unlocked).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
from dataclasses import dataclass, field

import torch

log = logging.getLogger("hosttune.torch")

HUGE_PAGE = 2 << 20
MAP_HUGETLB = 0x40000  # Python 3.11's mmap module has no constant for it
ALIGN = 64             # each tensor starts on a cache line (SIMD loads)
MODES = ("thp", "hugetlb")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.malloc_trim.argtypes = [ctypes.c_size_t]


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


@dataclass
class WeightArena:
    mode: str                 # where the arena came from: thp | hugetlb
    weight_bytes: int         # bytes of the parameters placed in it
    tensors: int
    length: int               # bytes mapped
    locked: bool = False
    notes: list[str] = field(default_factory=list)
    _map: mmap.mmap | None = field(default=None, repr=False)  # kept alive as long as the tensors point into it


def _map(length: int, mode: str, notes: list[str]) -> tuple[mmap.mmap, int, str]:
    """(mapping, offset of the first 2 MiB boundary in it, mode it got)."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    if mode == "hugetlb":
        try:
            return mmap.mmap(-1, _round_up(length, HUGE_PAGE), flags=flags | MAP_HUGETLB), 0, "hugetlb"
        except OSError as e:
            notes.append(f"hugetlb pool unusable ({os.strerror(e.errno or errno.ENOMEM)}): fell back to thp")
    mm = mmap.mmap(-1, _round_up(length, HUGE_PAGE) + HUGE_PAGE, flags=flags)
    mm.madvise(mmap.MADV_HUGEPAGE)  # before the first touch: the faults then take 2 MiB pages
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    return mm, (-addr) % HUGE_PAGE, "thp"


def pack_weights(model: torch.nn.Module, mode: str, lock: bool = False) -> WeightArena:
    """Move every CPU parameter of `model` into one huge-page arena (tied weights stay tied: each Parameter is
    visited once). Parameters on another device are left alone."""
    if mode not in MODES:
        raise ValueError(f"weights arena mode must be one of {', '.join(MODES)}, not {mode!r}")
    params = [p for p in model.parameters() if p.device.type == "cpu"]
    layout: list[tuple[torch.nn.Parameter, int, int]] = []
    end = 0
    for p in params:
        start = _round_up(end, ALIGN)
        size = p.numel() * p.element_size()
        layout.append((p, start, size))
        end = start + size
    notes: list[str] = []
    mm, base, got = _map(max(end, 1), mode, notes)
    flat = torch.frombuffer(mm, dtype=torch.uint8)
    with torch.no_grad():
        for p, start, size in layout:
            dst = flat[base + start: base + start + size].view(p.dtype).view(p.shape)
            dst.copy_(p.data)
            p.data = dst
    del flat
    # The old tensors' memory went back to malloc, whose arenas keep freed chunks mapped: give it to the kernel,
    # or the worker's RSS carries the weights twice.
    _libc.malloc_trim(0)
    arena = WeightArena(mode=got, weight_bytes=sum(s for _, _, s in layout), tensors=len(layout), length=len(mm),
                        notes=notes, _map=mm)
    if lock:
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        if _libc.mlock(addr, len(mm)) == 0:
            arena.locked = True
        else:
            arena.notes.append(f"mlock failed ({os.strerror(ctypes.get_errno())}): raise LimitMEMLOCK")
    for note in arena.notes:
        log.warning("weights arena: %s", note)
    return arena
