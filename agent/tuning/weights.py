"""The worker's weights staged in the hugepage pool: a hugetlbfs mount hosttune owns, holding a copy of the GGUF
that llama-server then maps (its smaps show the pages as Private_Hugetlb/Shared_Hugetlb).

stage_weights   journal the mount and the file (before either exists) -> mkdir -> mount -t hugetlbfs (pagesize
                2M, size capped to the file, root dir 0750 with the worker's group) -> create the file 0640 ->
                ftruncate to whole pages -> mmap MAP_SHARED and copy (hugetlbfs refuses write()) -> return it.
unstage_weights remove the file, unmount (lazily when a worker still maps it: the pages go back to the pool when
                it exits), remove the mount point, then drop the journal record. Idempotent, so a crash at any
                step is finished by the next call: the daemon calls it at stop and at start (an orphan left by a
                kill -9), `hosttune revert` too.

The copy is padded with zeros to a whole number of 2 MiB pages; llama-server (0.3.36 build) reads the GGUF by
its own offsets and serves from the padded file unchanged (checked on this kernel; it logs a harmless
"munmap failed" when it trims unused fragments, which hugetlbfs cannot do at 4 KiB granularity).
Whether a pool can hold the copy at all is decided at plan time (agent/tunable/weights_pool.py).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import stat
from pathlib import Path

import sh

from agent.errors import HostError, InputError
from agent.hostfs import HostPaths
from agent.tuning.journal import Journal, StagedWeights
from agent.worker.fsident import fs_identity
from agent.worker.privdrop import RunAs, check_readable

log = logging.getLogger("hosttune.engine")

PAGE_BYTES = 2 << 20
# Not under /run/hosttune: the unit's RuntimeDirectory is 0700 root, which the worker user cannot traverse.
MOUNT_DIR = "run/hosttune-weights"
MOUNT_SOURCE = "hosttune-weights"  # the mount's source name: what marks a hugetlbfs mount at MOUNT_DIR as ours
STAGED_NAME = "model.gguf"
MAX_STAGE_BYTES = 1 << 40  # no model file is bigger; bounds the mount size option and the copy
COPY_CHUNK = 16 << 20
MOUNT_TIMEOUT_S = 30.0


def padded_bytes(size: int) -> int:
    """The staged file's size: the GGUF's rounded up to whole 2 MiB pages."""
    return -(-size // PAGE_BYTES) * PAGE_BYTES


def default_mount_dir(paths: HostPaths) -> Path:
    return paths.root(MOUNT_DIR)


def mounted_at(mount_dir: Path, paths: HostPaths) -> str | None:
    """The filesystem type mounted at `mount_dir` (from /proc/self/mountinfo), or None when nothing is. Only
    hosttune's own mount (source MOUNT_SOURCE) reads "hugetlbfs"; another one reads "hugetlbfs (source X)"."""
    try:
        lines = paths.proc("self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or "-" not in fields:
            continue
        point = fields[4].replace("\\040", " ")
        if point == str(mount_dir):
            sep = fields.index("-")  # the last mount on a point is the visible one
            found = fields[sep + 1]
            if found == "hugetlbfs" and fields[sep + 2] != MOUNT_SOURCE:
                found = f"hugetlbfs (source {fields[sep + 2]})"
    return found


def open_source(model: Path, run_as: RunAs | None) -> int:
    """The model opened once, read-only, as the worker (its filesystem uid/gid): root never reads for the copy
    what the worker could not, and a symlink swapped in later changes nothing (the copy reads this fd).
    The path is resolved first (model caches link to blobs); its last component is then opened O_NOFOLLOW."""
    ident = fs_identity(run_as.uid, run_as.gid) if run_as is not None else contextlib.nullcontext()
    try:
        with ident:
            fd = os.open(model.resolve(), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        who = f" as {run_as.user} (uid {run_as.uid})" if run_as is not None else ""
        raise InputError(f"cannot open the model to stage{who}: {e.strerror}", path=model,
                         field="worker.model") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not 0 < st.st_size <= MAX_STAGE_BYTES:
            raise InputError("the model to stage is not a regular file of 1 byte to 1 TiB", path=model,
                             field="worker.model")
        if os.pread(fd, 4, 0) != b"GGUF":
            raise InputError("the model to stage is not a GGUF file (no GGUF magic)", path=model,
                             field="worker.model")
    except BaseException:
        os.close(fd)
        raise
    return fd


def fill(source: int, target: Path, size: int, gid: int | None) -> None:
    """Create `target` in a hugetlbfs mount and copy `size` bytes of the open `source` into it through a shared
    mapping."""
    length = padded_bytes(size)
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        if gid is not None:
            os.fchown(fd, 0, gid)
        os.fchmod(fd, 0o640)
        os.ftruncate(fd, length)
        with mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as view, \
                os.fdopen(os.dup(source), "rb") as src:
            offset = 0
            while offset < size:
                chunk = src.read(min(COPY_CHUNK, size - offset))
                if not chunk:
                    raise HostError(f"the model ended at {offset} bytes, expected {size} (changed while copied)")
                view[offset:offset + len(chunk)] = chunk
                offset += len(chunk)
    finally:
        os.close(fd)


def _mount(mount_dir: Path, length: int, gid: int | None) -> None:
    options = f"pagesize=2M,size={length},mode=0750,uid=0,gid={gid if gid is not None else 0}"
    try:
        sh.Command("mount")("-t", "hugetlbfs", "-o", options, MOUNT_SOURCE, str(mount_dir),
                            _timeout=MOUNT_TIMEOUT_S)
    except sh.ErrorReturnCode as e:
        raise HostError(f"mount -t hugetlbfs failed: {e.stderr.decode(errors='replace').strip()}",
                        path=mount_dir) from None


def _umount(mount_dir: Path) -> None:
    umount = sh.Command("umount")
    try:
        umount(str(mount_dir), _timeout=MOUNT_TIMEOUT_S)
    except sh.ErrorReturnCode:  # busy: a worker still maps the file; detach now, pages return when it exits
        umount("--lazy", str(mount_dir), _timeout=MOUNT_TIMEOUT_S)
        log.warning("%s was busy (a worker still maps the staged weights): unmounted lazily", mount_dir)


def stage_weights(journal: Journal, model: Path, paths: HostPaths, *, gid: int | None,
                  mount_dir: Path | None = None, run_as: RunAs | None = None) -> StagedWeights:
    """Copy `model` into a new hugetlbfs mount (journaled first). The caller holds the state lock and has
    checked the pool at plan time; an earlier staging still recorded is removed first. `run_as`: the worker's
    identity, which must be able to read the copy (else the staging is undone and InputError raised)."""
    unstage_weights(journal, paths)
    src = open_source(model, run_as)
    try:
        return _stage_from(journal, model, src, paths, gid=gid, run_as=run_as,
                           mount_dir=mount_dir if mount_dir is not None else default_mount_dir(paths))
    finally:
        os.close(src)


def _stage_from(journal: Journal, model: Path, src: int, paths: HostPaths, *, gid: int | None, mount_dir: Path,
                run_as: RunAs | None) -> StagedWeights:
    st = os.fstat(src)
    if mount_dir.is_symlink() or mounted_at(mount_dir, paths) is not None:
        raise HostError("the staging mount point is a symlink or already has something mounted on it: refusing "
                        "to stage there", path=mount_dir)
    length = padded_bytes(st.st_size)
    record = StagedWeights(source=str(model), mount=str(mount_dir), file=str(mount_dir / STAGED_NAME),
                           size_bytes=st.st_size, pages=length // PAGE_BYTES)
    journal.data.staged = record
    journal.save()
    try:
        mount_dir.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        mount_dir.mkdir(mode=0o755, exist_ok=True)
        mount_dir.chmod(0o755)  # whatever the umask (the unit's is 0077); the mount's root is then 0750 root:gid
        _mount(mount_dir, length, gid)
        fill(src, Path(record.file), st.st_size, gid)
        check_readable(Path(record.file), run_as)
    except BaseException as e:
        problems = unstage_weights(journal, paths)
        if isinstance(e, OSError):
            raise HostError(f"staging the weights failed: {e.strerror} (the pool may be short of free pages)"
                            + (f"; cleanup: {'; '.join(problems)}" if problems else ""), path=mount_dir) from e
        raise
    log.info("weights staged: %s -> %s (%d pages of 2 MiB)", model, record.file, record.pages)
    return record


def unstage_weights(journal: Journal, paths: HostPaths) -> list[str]:
    """Remove the staged file and its mount, then forget them. Returns the problems met (empty: all gone)."""
    record = journal.data.staged
    if record is None:
        return []
    mount_dir, problems = Path(record.mount), []
    fstype = mounted_at(mount_dir, paths)
    if fstype == "hugetlbfs":
        try:
            Path(record.file).unlink(missing_ok=True)
        except OSError as e:
            problems.append(f"{record.file}: {e.strerror}")
        try:
            _umount(mount_dir)
        except sh.ErrorReturnCode as e:
            problems.append(f"umount {mount_dir}: {e.stderr.decode(errors='replace').strip()}")
    elif fstype is not None:  # not ours: someone mounted something else there since
        problems.append(f"{mount_dir} now holds a {fstype} mount hosttune did not make: left alone")
    if not problems and mount_dir.is_dir() and not mount_dir.is_symlink():
        try:
            mount_dir.rmdir()
        except OSError as e:
            problems.append(f"{mount_dir}: {e.strerror}")
    if problems:
        log.warning("staged weights not fully removed: %s", "; ".join(problems))
        return problems
    journal.data.staged = None
    journal.save()
    log.info("staged weights removed (%s)", record.file)
    return []
