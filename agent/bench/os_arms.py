"""The OS changes `bench/os_effects.py` measures one at a time, and the host values each one sets and puts back.

An arm is how one fresh llama-server runs: where its weights live (`backing`, the vocabulary of the policy's
`worker.weights`: page_cache = llama-server's default mmap of the GGUF, hugetlbfs = the GGUF staged by
agent/tuning/weights.py in a hugetlbfs mount of the 2 MiB pool, anon = `--load-mode none`, read into anonymous
memory), whether they are locked (`--load-mode` from agent/worker/engines.LOAD_MODES, as the worker gets it), and
at most one host value set for the arm alone (THP `enabled`, or the model disk's `read_ahead_kb`). A change
compares two arms that differ in exactly one of these: A is the host as found, B that one change.

Every host value is written only here, read back after the write, and written back to the value found when the
arm ends (finally), but only while it still reads the value the arm set: a value someone else changed meanwhile (a
hosttune apply, another tool) is reported and left alone. The values found, each value an arm is about to set and
the private model copy are also kept on disk (found.json, under /run) before they are written, so a run killed with
SIGKILL is put right, on the same terms, by `bench/os_effects.py --restore`.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeGuard

from agent.errors import HostError, HostTuneError, InputError
from agent.fsio import atomic_write_json, load_json, read_bracketed, read_int
from agent.hostfs import HostPaths
from agent.tunable import formats
from agent.tunable.formats import Format
from agent.tuning.hostfile import is_kernel_file, read_raw, write_raw
from agent.tuning.journal import Journal
from agent.tuning.weights import PAGE_BYTES, padded_bytes, stage_weights, unstage_weights
from agent.worker.engines import LOAD_MODES

THP_MODES = ("never", "madvise", "always")
THP_FILE = "kernel/mm/transparent_hugepage/enabled"
POOL_FILE = "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
MAX_READAHEAD_KB = 65536          # 64 MiB: far above any disk's useful window; bounds what reaches sysfs
MAX_POOL_PAGES = 1 << 24          # 32 TiB of 2 MiB pages: a larger figure is not a real pool
DISK_NAME = re.compile(r"^[a-z][a-z0-9]{0,15}(-[0-9]{1,8})?$")   # sda, nvme0n1, md127, dm-0
RUN_DIR = "run/hosttune-os-effects"   # the found record, the staging journal and the staging mount
FOUND_NAME = "found.json"
COPY_PREFIX = "os-effects-"          # the private model copy's directory (bench/os_effects.py)
SET_KEYS = ("thp", "pool_pages", "readahead_kb")


@dataclass(frozen=True)
class Arm:
    name: str
    backing: str                    # page_cache | hugetlbfs | anon
    mlock: bool = False
    thp: str | None = None          # THP `enabled` for this arm; None: as found
    readahead_kb: int | None = None  # the model disk's read_ahead_kb for this arm; None: as found

    def load_mode(self) -> str | None:
        return LOAD_MODES[(self.backing, self.mlock)]

    def server_args(self) -> list[str]:
        mode = self.load_mode()
        return [] if mode is None else ["--load-mode", mode]

    def describe(self) -> str:
        where = {"page_cache": "mmap of the GGUF (page cache)", "hugetlbfs": "GGUF staged in hugetlbfs (2 MiB pool)",
                 "anon": "anonymous memory (--load-mode none)"}[self.backing]
        parts = [where] + (["mlock"] if self.mlock else [])
        parts += [f"THP {self.thp}"] if self.thp else []
        parts += [f"read_ahead_kb {self.readahead_kb}"] if self.readahead_kb is not None else []
        return ", ".join(parts)


@dataclass(frozen=True)
class Change:
    name: str
    a: str   # arm names
    b: str


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class FoundHost:
    """The host values the arms may change, as found before the first round."""

    thp: str
    pool_pages: int | None      # None: no 2 MiB pool on this kernel
    disk: str | None            # the whole disk under the model file; None: none (tmpfs, overlay, NFS)
    readahead_kb: int | None

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: object, where: Path) -> FoundHost:
        """Shapes checked: the record names sysfs files to write, so nothing odd may reach a path or a value."""
        if not isinstance(raw, dict) or set(raw) != {"thp", "pool_pages", "disk", "readahead_kb"}:
            raise InputError("not a found-host record", path=where)
        thp, pool, disk, ra = raw["thp"], raw["pool_pages"], raw["disk"], raw["readahead_kb"]
        if not isinstance(thp, str) or thp not in THP_MODES:
            raise InputError(f"thp {thp!r} is not one of {', '.join(THP_MODES)}", path=where, field="thp")
        if pool is not None and not (_is_int(pool) and 0 <= pool <= MAX_POOL_PAGES):
            raise InputError(f"pool_pages {pool!r} out of range", path=where, field="pool_pages")
        if disk is not None and (not isinstance(disk, str) or not DISK_NAME.match(disk)):
            raise InputError(f"disk {disk!r} is not a disk name", path=where, field="disk")
        if ra is not None and not (_is_int(ra) and 0 <= ra <= MAX_READAHEAD_KB):
            raise InputError(f"readahead_kb {ra!r} out of range", path=where, field="readahead_kb")
        return cls(thp=thp, pool_pages=pool, disk=disk, readahead_kb=ra)


def readahead_file(paths: HostPaths, disk: str) -> Path:
    if not DISK_NAME.match(disk):
        raise InputError(f"{disk!r} is not a disk name", field="disk")
    return paths.sys("block", disk, "queue", "read_ahead_kb")


def find_host(paths: HostPaths, disk: str | None) -> FoundHost:
    thp, _ = read_bracketed(paths.sys(THP_FILE))
    if thp is None or thp not in THP_MODES:
        raise HostError("cannot read the THP mode (transparent_hugepage/enabled)", path=paths.sys(THP_FILE))
    ra = read_int(readahead_file(paths, disk)) if disk is not None else None
    return FoundHost(thp=thp, pool_pages=read_int(paths.sys(POOL_FILE)), disk=disk if ra is not None else None,
                     readahead_kb=ra)


def catalogue(found: FoundHost, readahead_b_kb: int | None, *, hugetlbfs: bool,
              mlock_why_not: str | None) -> tuple[dict[str, Arm], dict[str, Change], dict[str, str]]:
    """Every arm and change this host allows, and the changes it does not allow with why. readahead_b_kb: arm B's
    read_ahead_kb (None: 128 KiB, or 8192 when 128 is what was found)."""
    arms = {"found": Arm("found", "page_cache"), "anon": Arm("anon", "anon")}
    changes: dict[str, Change] = {}
    skipped: dict[str, str] = {}

    def add(change: str, a: str, arm: Arm) -> None:
        arms[arm.name] = arm
        changes[change] = Change(change, a, arm.name)

    if hugetlbfs and found.pool_pages is not None:
        add("hugetlbfs", "found", Arm("hugetlbfs", "hugetlbfs"))
    else:
        skipped["hugetlbfs"] = "this kernel has no hugetlbfs or no 2 MiB pool"
    add("no-mmap", "found", arms["anon"])
    for mode in THP_MODES:
        for prefix, base in (("", "found"), ("anon-", "anon")):
            if mode == found.thp:
                skipped[f"{prefix}thp-{mode}"] = f"THP is already {mode!r} on this host (arm A)"
            else:
                add(f"{prefix}thp-{mode}", base, Arm(f"{prefix}thp-{mode}", arms[base].backing, thp=mode))
    if mlock_why_not is None:
        add("mlock", "found", Arm("mlock", "page_cache", mlock=True))
    else:
        skipped["mlock"] = mlock_why_not
    ra_b = readahead_b_kb if readahead_b_kb is not None else (8192 if found.readahead_kb == 128 else 128)
    if not 0 < ra_b <= MAX_READAHEAD_KB:
        raise InputError(f"must be within 1..{MAX_READAHEAD_KB} KiB, got {ra_b}", field="--readahead-kb")
    if found.disk is None:
        skipped["readahead"] = "the model's file system has no block device (tmpfs, overlay or network)"
    elif ra_b == found.readahead_kb:
        skipped["readahead"] = f"read_ahead_kb is already {ra_b} (arm A): pick another --readahead-kb"
    else:
        add("readahead", "found", Arm("readahead", "page_cache", readahead_kb=ra_b))
    return arms, changes, skipped


def mlock_problem(model_bytes: int, limit_bytes: int | None, is_root: bool) -> str | None:
    """Why llama-server (our child, with our limits) could not lock the weights; None when it can."""
    if is_root or limit_bytes is None or limit_bytes >= model_bytes:
        return None
    return (f"RLIMIT_MEMLOCK ({limit_bytes >> 20} MiB) is below the model ({model_bytes >> 20} MiB) and we are not "
            f"root: --load-mode mmap+mlock could not lock the weights")


def _write(path: Path, value: str, fmt: Format = "scalar") -> None:
    """One write of `value`, as the tuning engine's writer does it (a plain-file tree stores what the kernel would
    show afterwards)."""
    write_raw(path, value if is_kernel_file(path) else formats.render(fmt, read_raw(path), value))


def _found_record(paths: HostPaths) -> Path:
    return run_dir(paths) / FOUND_NAME


def _mark_set(paths: HostPaths, key: str, value: str | None) -> None:
    """In found.json (when a run keeps one), the value `key` is about to be set to (None: put back)."""
    record = _found_record(paths)
    if record.exists():
        raw = load_json(record)
        raw["set"][key] = value
        atomic_write_json(record, raw)


def _current(path: Path, fmt: Format) -> str | None:
    if fmt == "choice":
        return read_bracketed(path)[0]
    now = read_int(path)
    return None if now is None else str(now)


def put_back(path: Path, found: str, was_set: str, fmt: Format) -> str:
    """`found` written back only if `path` still reads `was_set`; what was done, in words."""
    now = _current(path, fmt)
    if now == found:
        return f"{path} = {found} (already)"
    if now != was_set:
        return f"{path} left alone: reads {now!r}, the run had set {was_set!r} (changed by someone else)"
    _write(path, found, fmt)
    return f"{path} = {found}"


@contextmanager
def _set_for_block(paths: HostPaths, key: str, path: Path, value: str, found: str, fmt: Format,
                   why: str | None = None) -> Iterator[None]:
    _mark_set(paths, key, value)
    try:
        _write(path, value, fmt)
        now = _current(path, fmt)
        if now != value:
            raise HostError(why.format(now=now) if why else f"wrote {value!r}, reads back {now!r}", path=path)
        yield
    finally:
        done = put_back(path, found, value, fmt)
        _mark_set(paths, key, None)
        if "left alone" in done:
            raise HostError(done)


def thp_set(paths: HostPaths, mode: str, found: str) -> AbstractContextManager[None]:
    return _set_for_block(paths, "thp", paths.sys(THP_FILE), mode, found, "choice")


def readahead_set(paths: HostPaths, disk: str, kb: int, found: int) -> AbstractContextManager[None]:
    return _set_for_block(paths, "readahead_kb", readahead_file(paths, disk), str(kb), str(found), "scalar")


def pool_grown(paths: HostPaths, pages: int, found: int) -> AbstractContextManager[None]:
    """`pages` more 2 MiB pages in the pool than found (so a pool others reserved is never borrowed)."""
    return _set_for_block(paths, "pool_pages", paths.sys(POOL_FILE), str(found + pages), str(found), "scalar",
                          why=f"the 2 MiB pool grew to {{now}} pages, not {found + pages} (memory too fragmented?)")


@contextmanager
def arm_host(arm: Arm, found: FoundHost, paths: HostPaths) -> Iterator[None]:
    """The host values of `arm` set for the block and put back to `found` after it."""
    with ExitStack() as stack:
        if arm.thp is not None:
            stack.enter_context(thp_set(paths, arm.thp, found.thp))
        if arm.readahead_kb is not None:
            assert found.disk is not None and found.readahead_kb is not None  # catalogue() skipped it otherwise
            stack.enter_context(readahead_set(paths, found.disk, arm.readahead_kb, found.readahead_kb))
        yield


@contextmanager
def served_model(arm: Arm, model: Path, found: FoundHost, paths: HostPaths, run_dir: Path) -> Iterator[Path]:
    """The file llama-server is started on: the model itself, or (hugetlbfs) its copy staged by the project's
    staging code in a mount of the pool grown for it; unstaged and the pool shrunk back after the block."""
    if arm.backing != "hugetlbfs":
        yield model
        return
    assert found.pool_pages is not None
    pages = padded_bytes(model.stat().st_size) // PAGE_BYTES
    journal = Journal(run_dir / "journal.json")
    with pool_grown(paths, pages, found.pool_pages):
        try:
            record = stage_weights(journal, model, paths, gid=None, mount_dir=run_dir / "mnt")
            yield Path(record.file)
        finally:
            problems = unstage_weights(journal, paths)
            if problems:
                raise HostError("the staged weights were not fully removed: " + "; ".join(problems))


def run_dir(paths: HostPaths) -> Path:
    return paths.root(RUN_DIR)


def refuse_if_left(where: Path) -> None:
    if (where / FOUND_NAME).exists():
        raise HostError(f"{where / FOUND_NAME} exists: an earlier run did not finish; run with --restore first")


def keep_found(found: FoundHost, where: Path, copy: Path | None = None) -> None:
    """Before the first write: the values found (and the private model copy), for --restore after a kill."""
    refuse_if_left(where)
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_json(where / FOUND_NAME, {"found": found.to_json(), "set": dict.fromkeys(SET_KEYS),
                                           "copy": None if copy is None else str(copy)})


def forget_found(where: Path) -> None:
    (where / FOUND_NAME).unlink(missing_ok=True)
    (where / "journal.json").unlink(missing_ok=True)
    if where.is_dir() and not any(where.iterdir()):
        where.rmdir()


def _load_record(record: Path) -> tuple[FoundHost, dict[str, str | None], Path | None]:
    """Shapes checked: the record names files to write and a directory to remove."""
    raw = load_json(record)
    if not isinstance(raw, dict) or set(raw) != {"found", "set", "copy"}:
        raise InputError("not a found-host record", path=record)
    found = FoundHost.from_json(raw["found"], record)
    marks, copy = raw["set"], raw["copy"]
    if not isinstance(marks, dict) or set(marks) != set(SET_KEYS):
        raise InputError("`set` is not a record of set values", path=record, field="set")
    limits = {"thp": None, "pool_pages": MAX_POOL_PAGES, "readahead_kb": MAX_READAHEAD_KB}
    for key, value in marks.items():
        ok = value is None or (isinstance(value, str) and (
            value in THP_MODES if key == "thp" else value.isdigit() and int(value) <= (limits[key] or 0)))
        if not ok:
            raise InputError(f"set {key} {value!r} out of range", path=record, field="set")
    if copy is not None and not (isinstance(copy, str) and copy.startswith("/") and ".." not in copy
                                 and re.fullmatch(COPY_PREFIX + r"[A-Za-z0-9_]{1,32}", Path(copy).name)):
        raise InputError(f"copy {copy!r} is not a private model copy", path=record, field="copy")
    return found, marks, None if copy is None else Path(copy)


def restore_found(paths: HostPaths, where: Path) -> list[str]:
    """What an interrupted run left: the staged copy and the private model copy removed, each value the run had
    set written back as found unless someone changed it since. Every target is tried; HostError at the end names
    what failed (the record is then kept for another --restore). Returns what was done (empty: nothing was left)."""
    record = where / FOUND_NAME
    if not record.exists():
        return []
    found, marks, copy = _load_record(record)
    done: list[str] = []
    problems: list[str] = []
    if (where / "journal.json").exists():
        left = unstage_weights(Journal(where / "journal.json"), paths)
        problems += [f"staged weights: {p}" for p in left]
        if not left:
            done.append("staged weights removed")
    targets: list[tuple[str, Path | None, str | None, Format]] = [
        ("thp", paths.sys(THP_FILE), found.thp, "choice"),
        ("pool_pages", paths.sys(POOL_FILE), None if found.pool_pages is None else str(found.pool_pages), "scalar"),
        ("readahead_kb", readahead_file(paths, found.disk) if found.disk is not None else None,
         None if found.readahead_kb is None else str(found.readahead_kb), "scalar")]
    for key, path, value, fmt in targets:
        was_set = marks[key]
        if path is None or value is None or was_set is None:
            continue
        try:
            done.append(put_back(path, value, was_set, fmt))
        except (OSError, HostTuneError) as e:
            problems.append(f"{path}: {e}")
    if copy is not None and copy.is_dir() and not copy.is_symlink():
        try:
            shutil.rmtree(copy)
            done.append(f"private model copy {copy} removed")
        except OSError as e:
            problems.append(f"{copy}: {e}")
    if problems:
        raise HostError("could not put back: " + "; ".join(problems) + " (done: " + "; ".join(done) + ")")
    forget_found(where)
    return done
