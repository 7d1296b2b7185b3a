"""Where the worker's memory lives, from its own /proc/PID/smaps_rollup: RSS, anonymous, transparent huge pages,
hugetlb pool pages, PMD-mapped file pages, locked — and the share of the model's size that sits in huge pages
(hugetlb + anonymous huge + file PMD-mapped, over the model file's size, at most 1).

smaps_rollup is one small file (about 25 lines of `Key: N kB`); it is read capped, and only allow-listed keys
with sane values are kept, so a strange kernel (or a fixture tree) cannot grow the daemon. Reading it walks the
worker's page tables, which is cheap but not free: the supervisor samples it every MEMORY_SAMPLE_S, not per request.
Under the systemd unit the daemon opens it with the worker's filesystem identity (agent/worker/fsident.py).
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agent.errors import HostTuneError
from agent.fsio import read_bracketed, read_text_capped
from agent.hostfs import HostPaths
from agent.worker.fsident import fs_identity

MEMORY_SAMPLE_S = 15.0
MAX_ROLLUP_BYTES = 16 << 10
MAX_KB = 1 << 40  # 1 PiB: a larger figure is not a real process's
LINE = re.compile(r"^([A-Za-z_]{1,32}):\s+(\d{1,16}) kB$")
# smaps_rollup key -> our field (bytes). Shared_Hugetlb and Private_Hugetlb add up into hugetlb_bytes.
KEYS = {
    "Rss": "rss_bytes", "Pss": "pss_bytes", "Anonymous": "anonymous_bytes", "AnonHugePages": "anon_huge_bytes",
    "FilePmdMapped": "file_pmd_bytes", "ShmemPmdMapped": "shmem_pmd_bytes", "Locked": "locked_bytes",
    "Swap": "swap_bytes", "Shared_Hugetlb": "hugetlb_bytes", "Private_Hugetlb": "hugetlb_bytes",
}
HUGE_FIELDS = ("hugetlb_bytes", "anon_huge_bytes", "file_pmd_bytes")


class WorkerMemory(BaseModel):
    """One reading of the worker's smaps_rollup (bytes), with the model's share in huge pages."""

    model_config = ConfigDict(extra="forbid")

    pid: int
    at: float = Field(description="when it was read (epoch seconds)")
    rss_bytes: int | None = None
    pss_bytes: int | None = None
    anonymous_bytes: int | None = None
    anon_huge_bytes: int | None = Field(None, description="transparent huge pages (AnonHugePages)")
    file_pmd_bytes: int | None = Field(None, description="file pages mapped as 2 MiB (FilePmdMapped)")
    shmem_pmd_bytes: int | None = None
    hugetlb_bytes: int | None = Field(None, description="pages of the hugetlb pool (Private_ + Shared_Hugetlb)")
    locked_bytes: int | None = None
    swap_bytes: int | None = None
    model_bytes: int | None = Field(None, description="size of the model file")
    weights_in_huge_pages: float | None = Field(
        None, description="(hugetlb + anon huge + file PMD-mapped) / model size, at most 1")
    thp_mode: str | None = Field(None, description="THP mode (transparent_hugepage/enabled) at the reading")
    note: str | None = Field(None, description="why the weights cannot be in huge pages, when that is known")
    error: str | None = Field(None, description="why smaps_rollup could not be read")

    def describe(self) -> str:
        """One line for `hosttune worker status`."""
        if self.error is not None:
            return f"unreadable ({self.error})"

        def mib(v: int | None) -> str:
            return "-" if v is None else f"{v / (1 << 20):.1f} MiB"

        text = (f"rss {mib(self.rss_bytes)}, anonymous {mib(self.anonymous_bytes)} (THP {mib(self.anon_huge_bytes)})"
                f", hugetlb {mib(self.hugetlb_bytes)}, file PMD {mib(self.file_pmd_bytes)}, locked "
                f"{mib(self.locked_bytes)}")
        if self.weights_in_huge_pages is not None:
            text += (f"; weights in huge pages {self.weights_in_huge_pages:.0%} of the model's "
                     f"{mib(self.model_bytes)} (THP {self.thp_mode or '-'})")
        return text + (f"; {self.note}" if self.note else "")

    def huge_bytes(self) -> int | None:
        values = [getattr(self, f) for f in HUGE_FIELDS]
        return None if all(v is None for v in values) else sum(v or 0 for v in values)


def parse_smaps_rollup(text: str) -> dict[str, int]:
    """Our fields (bytes) from smaps_rollup's text; unknown keys, odd lines and absurd values are skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines()[:200]:
        m = LINE.match(line.strip())
        if m is None or m.group(1) not in KEYS:
            continue
        kb = int(m.group(2))
        if kb > MAX_KB:
            continue
        field = KEYS[m.group(1)]
        out[field] = out.get(field, 0) + kb * 1024
    return out


def thp_mode(paths: HostPaths) -> str | None:
    active, _ = read_bracketed(paths.sys("kernel/mm/transparent_hugepage/enabled"))
    return active


def weights_note(mem: WorkerMemory, engine: str | None) -> str | None:
    """Why the weights cannot be in huge pages here, when the reading shows they are not."""
    if mem.weights_in_huge_pages is None or mem.weights_in_huge_pages >= 0.9:
        return None
    if mem.thp_mode == "never" and not mem.hugetlb_bytes:
        return "THP is 'never': anonymous weights cannot be in huge pages (set thp.enabled madvise or always)"
    if engine == "llamacpp" and not mem.hugetlb_bytes and not mem.file_pmd_bytes:
        return "the model is mapped from the page cache in 4 KiB pages"
    return None


def read_worker_memory(paths: HostPaths, pid: int, uid: int | None = None, gid: int | None = None,
                       model: Path | None = None, engine: str | None = None) -> WorkerMemory:
    """The worker's smaps_rollup as a WorkerMemory; a reading that failed carries `error` and no figures.
    uid/gid: the worker's, to open the file with its filesystem identity (see fsident)."""
    mem = WorkerMemory(pid=pid, at=time.time(), thp_mode=thp_mode(paths))
    if model is not None:
        with contextlib.suppress(OSError):
            mem.model_bytes = model.stat().st_size
    path = paths.proc(str(pid), "smaps_rollup")
    try:
        if uid is not None and gid is not None:
            with fs_identity(uid, gid):
                text = read_text_capped(path, MAX_ROLLUP_BYTES, errors="replace")
        else:
            text = read_text_capped(path, MAX_ROLLUP_BYTES, errors="replace")
    except OSError as e:
        mem.error = f"cannot read {path}: {e.strerror or type(e).__name__}"
        return mem
    except HostTuneError as e:
        mem.error = str(e)
        return mem
    for field, value in parse_smaps_rollup(text).items():
        setattr(mem, field, value)
    huge = mem.huge_bytes()
    if huge is not None and mem.model_bytes:
        mem.weights_in_huge_pages = round(min(1.0, huge / mem.model_bytes), 4)
    mem.note = weights_note(mem, engine)
    return mem
