"""Staging the weights in a hugetlbfs mount, journaled: the record is on disk before the mount and the file
exist, unstage removes the file, the mount and the record, a crash (record left behind) is cleaned up by the
next daemon start (api.recover_only) and by `hosttune revert`. The mount itself is faked here (unit tier: no
processes); tests/kernel/test_weights_hugetlbfs.py mounts a real hugetlbfs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.errors import HostError, InputError
from agent.hostfs import HostPaths
from agent.policy.model import WorkerSpec
from agent.tuning import api, weights
from agent.tuning.journal import Journal
from agent.tuning.state import StateDir
from agent.worker.privdrop import RunAs


class FakeMounts:
    """Mount points 'mounted' with hugetlbfs, and what the journal on disk held when each mount was made."""

    def __init__(self, state: Path) -> None:
        self.mounted: set[str] = set()
        self.journal_at_mount: list[dict[str, object] | None] = []
        self.state = state
        self.calls: list[tuple[str, str]] = []

    def mount(self, mount_dir: Path, length: int, gid: int | None) -> None:
        raw = json.loads((self.state / "journal.json").read_text())
        self.journal_at_mount.append(raw.get("staged"))
        self.calls.append(("mount", f"{mount_dir} size={length} gid={gid}"))
        self.mounted.add(str(mount_dir))

    def umount(self, mount_dir: Path) -> None:
        self.calls.append(("umount", str(mount_dir)))
        self.mounted.discard(str(mount_dir))

    def at(self, mount_dir: Path, paths: HostPaths) -> str | None:
        return "hugetlbfs" if str(mount_dir) in self.mounted else None


@pytest.fixture
def mounts(monkeypatch: pytest.MonkeyPatch, state_dir: Path) -> FakeMounts:
    fake = FakeMounts(state_dir)
    monkeypatch.setattr(weights, "_mount", fake.mount)
    monkeypatch.setattr(weights, "_umount", fake.umount)
    monkeypatch.setattr(weights, "mounted_at", fake.at)
    return fake


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 12_000 + b"tail")  # ~3 MiB: two 2 MiB pages
    return path


def test_stage_journals_first_then_copies_padded(host: HostPaths, state_dir: Path, mounts: FakeMounts,
                                                  model: Path, tmp_path: Path) -> None:
    mount_dir = tmp_path / "run/hugetlb"
    staged = api.stage_weights(StateDir(state_dir), WorkerSpec(), host, gid=1234, model=model, mount_dir=mount_dir)
    size = model.stat().st_size
    assert (staged.pages, staged.size_bytes, staged.file) == (2, size, str(mount_dir / "model.gguf"))
    # journaled before the mount was made
    assert mounts.journal_at_mount == [json.loads(staged.model_dump_json())]
    assert mounts.calls == [("mount", f"{mount_dir} size={2 * weights.PAGE_BYTES} gid=1234")]
    data = Path(staged.file).read_bytes()
    assert len(data) == 2 * weights.PAGE_BYTES and data[:size] == model.read_bytes() and not data[size:].strip(b"\0")
    assert oct(Path(staged.file).stat().st_mode & 0o777) == "0o640"
    assert StateDir(state_dir).journal().data.staged == staged


def test_unstage_removes_file_mount_and_record(host: HostPaths, state_dir: Path, mounts: FakeMounts,
                                               model: Path, tmp_path: Path) -> None:
    mount_dir = tmp_path / "run/hugetlb"
    api.stage_weights(StateDir(state_dir), WorkerSpec(), host, gid=None, model=model, mount_dir=mount_dir)
    assert api.unstage_weights(StateDir(state_dir), host) == []
    assert not mount_dir.exists() and not mounts.mounted and mounts.calls[-1] == ("umount", str(mount_dir))
    assert StateDir(state_dir).journal().data.staged is None
    assert api.unstage_weights(StateDir(state_dir), host) == []  # idempotent


def test_a_second_staging_replaces_the_first(host: HostPaths, state_dir: Path, mounts: FakeMounts,
                                             model: Path, tmp_path: Path) -> None:
    state = StateDir(state_dir)
    api.stage_weights(state, WorkerSpec(), host, gid=None, model=model, mount_dir=tmp_path / "a")
    api.stage_weights(state, WorkerSpec(), host, gid=None, model=model, mount_dir=tmp_path / "b")
    assert not (tmp_path / "a").exists() and mounts.mounted == {str(tmp_path / "b")}


def test_orphan_of_a_killed_daemon_is_removed_at_the_next_start(host: HostPaths, state_dir: Path,
                                                                 mounts: FakeMounts, model: Path,
                                                                 tmp_path: Path) -> None:
    mount_dir = tmp_path / "run/hugetlb"
    api.stage_weights(StateDir(state_dir), WorkerSpec(), host, gid=None, model=model, mount_dir=mount_dir)
    # kill -9: nothing ran after the staging; a new process reads the journal from disk
    note = api.recover_only(StateDir(state_dir), paths=host)
    assert note is not None and "removed orphaned staged weights" in note
    assert not mount_dir.exists() and not mounts.mounted and StateDir(state_dir).journal().data.staged is None
    assert api.recover_only(StateDir(state_dir), paths=host) is None


def test_crash_between_journal_and_mount_is_cleaned_too(host: HostPaths, state_dir: Path, mounts: FakeMounts,
                                                        tmp_path: Path) -> None:
    mount_dir = tmp_path / "run/hugetlb"
    mount_dir.mkdir(parents=True)  # mkdir done, mount never made
    journal = Journal(StateDir(state_dir).ensure().journal_path)
    journal.data.staged = weights.StagedWeights(source="/m", mount=str(mount_dir), file=str(mount_dir / "model.gguf"),
                                                size_bytes=1, pages=1)
    journal.save()
    assert "removed orphaned" in (api.recover_only(StateDir(state_dir), paths=host) or "")
    assert not mount_dir.exists() and not mounts.calls


def test_revert_removes_staged_weights(host: HostPaths, state_dir: Path, mounts: FakeMounts, model: Path,
                                       tmp_path: Path) -> None:
    mount_dir = tmp_path / "run/hugetlb"
    api.stage_weights(StateDir(state_dir), WorkerSpec(), host, gid=None, model=model, mount_dir=mount_dir)
    result = api.revert(StateDir(state_dir), paths=host)
    assert result.ok and result.restored == [f"staged weights {mount_dir / 'model.gguf'}"]
    assert not mount_dir.exists() and StateDir(state_dir).journal().data.staged is None


def test_a_foreign_mount_is_left_alone(host: HostPaths, state_dir: Path, mounts: FakeMounts, model: Path,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mount_dir = tmp_path / "run/hugetlb"
    api.stage_weights(StateDir(state_dir), WorkerSpec(), host, gid=None, model=model, mount_dir=mount_dir)
    monkeypatch.setattr(weights, "mounted_at", lambda d, p: "ext4")  # someone mounted over it since
    problems = api.unstage_weights(StateDir(state_dir), host)
    assert problems and "ext4 mount hosttune did not make" in problems[0]
    assert StateDir(state_dir).journal().data.staged is not None  # kept: a later call may finish it


def test_refuses_an_occupied_mount_point(host: HostPaths, state_dir: Path, mounts: FakeMounts, model: Path,
                                         tmp_path: Path) -> None:
    mounts.mounted.add(str(tmp_path / "busy"))
    with pytest.raises(HostError, match="already has something mounted"):
        api.stage_weights(StateDir(state_dir), WorkerSpec(), host, gid=None, model=model, mount_dir=tmp_path / "busy")
    assert StateDir(state_dir).journal().data.staged is None and not mounts.calls


def test_refuses_a_model_that_is_not_a_regular_file(host: HostPaths, state_dir: Path, mounts: FakeMounts,
                                                    tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a regular file"):
        api.stage_weights(StateDir(state_dir), WorkerSpec(), host, gid=None, model=tmp_path, mount_dir=tmp_path / "x")
    assert StateDir(state_dir).journal().data.staged is None


def test_a_failed_copy_undoes_the_staging(host: HostPaths, state_dir: Path, mounts: FakeMounts, model: Path,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pages(*args: object) -> None:
        raise OSError(12, "Cannot allocate memory")
    monkeypatch.setattr(weights, "fill", no_pages)
    with pytest.raises(HostError, match="staging the weights failed: Cannot allocate memory"):
        api.stage_weights(StateDir(state_dir), WorkerSpec(), host, gid=None, model=model, mount_dir=tmp_path / "m")
    assert not (tmp_path / "m").exists() and not mounts.mounted and StateDir(state_dir).journal().data.staged is None


def test_mounted_at_reads_mountinfo(host: HostPaths) -> None:
    host.proc("self").mkdir(exist_ok=True)
    host.proc("self/mountinfo").write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "98 22 0:50 / /run/hosttune-weights rw,relatime - hugetlbfs hosttune-weights rw,pagesize=2M\n"
        "99 22 0:51 / /run/other rw,relatime - hugetlbfs nodev rw,pagesize=2M\n")
    assert weights.mounted_at(Path("/run/hosttune-weights"), host) == "hugetlbfs"
    assert weights.mounted_at(Path("/run/other"), host) == "hugetlbfs (source nodev)"
    assert weights.mounted_at(Path("/run"), host) is None


def test_a_foreign_hugetlbfs_mount_is_not_unstaged(host: HostPaths, state_dir: Path, model: Path,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a hugetlbfs mount with hosttune's source name is taken for ours (M8)."""
    mount_dir = tmp_path / "w"
    monkeypatch.setattr(weights, "_mount", lambda *a: None)
    umounts: list[Path] = []
    monkeypatch.setattr(weights, "_umount", umounts.append)
    host.proc("self").mkdir(exist_ok=True)
    host.proc("self/mountinfo").write_text("22 1 0:21 / / rw - ext4 /dev/vda rw\n")
    api.stage_weights(StateDir(state_dir), WorkerSpec(), host, gid=None, model=model, mount_dir=mount_dir)
    host.proc("self/mountinfo").write_text(  # someone else's hugetlbfs now sits on the mount point
        f"22 1 0:21 / / rw - ext4 /dev/vda rw\n98 22 0:50 / {mount_dir} rw - hugetlbfs nodev rw,pagesize=2M\n")
    problems = api.unstage_weights(StateDir(state_dir), host)
    assert problems and "hugetlbfs (source nodev) mount hosttune did not make" in problems[0]
    assert not umounts and (mount_dir / "model.gguf").exists() and StateDir(state_dir).journal().data.staged


def test_the_mount_point_is_reachable_by_the_worker_user(host: HostPaths, state_dir: Path, mounts: FakeMounts,
                                                         model: Path) -> None:
    """Not under the unit's 0700 RuntimeDirectory, and created 0755 whatever the umask (H1)."""
    unit = (Path(__file__).resolve().parents[2] / "systemd/hosttune.service").read_text()
    runtime = [line.split("=", 1)[1].split() for line in unit.splitlines() if line.startswith("RuntimeDirectory=")]
    for name in (n for names in runtime for n in names):
        assert not Path("/", weights.MOUNT_DIR).is_relative_to(Path("/run", name))
    old = os.umask(0o077)
    try:
        staged = api.stage_weights(StateDir(state_dir), WorkerSpec(), host, gid=None, model=model)
    finally:
        os.umask(old)
    mount_dir = Path(staged.mount)
    assert mount_dir == weights.default_mount_dir(host)
    assert mount_dir.parent == host.root("run")  # directly in /run (0755 on a host), not in a 0700 dir
    assert mount_dir.stat().st_mode & 0o777 == 0o755  # the umask did not narrow it


def test_staging_is_undone_when_the_worker_cannot_read_the_copy(host: HostPaths, state_dir: Path,
                                                                 mounts: FakeMounts, model: Path,
                                                                 tmp_path: Path) -> None:
    mount_dir = tmp_path / "w"
    mount_dir.mkdir(mode=0o700)
    nobody = RunAs(user="nobody", uid=os.getuid() + 4242, gid=os.getgid() + 4242)
    with pytest.raises(InputError, match="cannot"):
        api.stage_weights(StateDir(state_dir), WorkerSpec(), host, gid=None, model=model, mount_dir=mount_dir,
                          run_as=nobody)
    assert not mounts.mounted and StateDir(state_dir).journal().data.staged is None


def test_revert_unstages_before_the_pool_shrinks(host: HostPaths, state_dir: Path, mounts: FakeMounts,
                                                 model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The staged file holds pool pages: it goes before revert_all puts nr_hugepages back (L3)."""
    from agent.tuning import revert

    seen: list[object] = []
    real = revert.revert_all

    def spy(journal: Journal, *args: object, **kwargs: object) -> revert.RevertResult:
        seen.append(journal.data.staged)
        return real(journal, *args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(revert, "revert_all", spy)
    api.stage_weights(StateDir(state_dir), WorkerSpec(), host, gid=None, model=model, mount_dir=tmp_path / "w")
    result = api.revert(StateDir(state_dir), paths=host)
    assert seen == [None] and result.restored == [f"staged weights {tmp_path / 'w' / 'model.gguf'}"]


@pytest.mark.skipif(os.geteuid() != 0, reason="opening as the worker (setfsuid) needs CAP_SETUID")
@pytest.mark.parametrize("via_symlink", [False, True])
def test_a_model_the_worker_cannot_read_is_not_copied(host: HostPaths, state_dir: Path, mounts: FakeMounts,
                                                      model: Path, tmp_path: Path, via_symlink: bool) -> None:
    """The source is opened once, as the worker: root does not copy a root-only file into the pool (H3)."""
    tmp_path.chmod(0o755)
    model.chmod(0o600)  # root-only
    source = model
    if via_symlink:
        source = tmp_path / "link.gguf"
        source.symlink_to(model)
    with pytest.raises(InputError, match="cannot open the model to stage as nobody"):
        api.stage_weights(StateDir(state_dir), WorkerSpec(), host, gid=65534, model=source,
                          mount_dir=tmp_path / "w", run_as=RunAs(user="nobody", uid=65534, gid=65534))
    assert not mounts.calls and not (tmp_path / "w").exists() and StateDir(state_dir).journal().data.staged is None


def test_a_file_without_the_gguf_magic_is_not_staged(host: HostPaths, state_dir: Path, mounts: FakeMounts,
                                                     tmp_path: Path) -> None:
    other = tmp_path / "shadow"
    other.write_bytes(b"root:x:0:0\n" * 10)
    with pytest.raises(InputError, match="no GGUF magic"):
        api.stage_weights(StateDir(state_dir), WorkerSpec(), host, gid=None, model=other, mount_dir=tmp_path / "w")
    assert not mounts.calls and StateDir(state_dir).journal().data.staged is None
