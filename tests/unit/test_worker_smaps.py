"""Where the worker's memory lives (agent/worker/smaps.py): smaps_rollup parsed defensively, the model's share in
huge pages, the reason when THP is off, the one-line summary, the fs identity switch, and the telemetry series."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from agent.commands import worker as worker_cmd
from agent.hostfs import HostPaths
from agent.metrics.prom import format_families, parse_text, sample_value
from agent.telemetry.worker import WorkerSample, WorkerSampler, memory_fields
from agent.worker.fsident import current_fs_ids, fs_identity
from agent.worker.smaps import MAX_ROLLUP_BYTES, parse_smaps_rollup, read_worker_memory
from agent.worker.status import WorkerState, WorkerStatus

# The shape of this kernel's (6.18) smaps_rollup, figures of a worker with THP-backed and hugetlb weights.
ROLLUP = """56429f74f000-7ffdaf052000 ---p 00000000 00:00 0                          [rollup]
Rss:              614400 kB
Pss:              600000 kB
Pss_Dirty:        500000 kB
Pss_Anon:         500000 kB
Pss_File:         100000 kB
Pss_Shmem:             0 kB
Shared_Clean:      14400 kB
Shared_Dirty:          0 kB
Private_Clean:    100000 kB
Private_Dirty:    500000 kB
Referenced:       614400 kB
Anonymous:        512000 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:    266240 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:      4096 kB
Shared_Hugetlb:     2048 kB
Private_Hugetlb:   10240 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:           307200 kB
"""


def tree(tmp_path: Path, rollup: str | bytes | None, thp: str = "always [madvise] never") -> HostPaths:
    paths = HostPaths(procfs=tmp_path / "proc", sysfs=tmp_path / "sys", rootfs=tmp_path)
    (tmp_path / "proc/4242").mkdir(parents=True)
    if rollup is not None:
        data = rollup.encode() if isinstance(rollup, str) else rollup
        (tmp_path / "proc/4242/smaps_rollup").write_bytes(data)
    thp_dir = tmp_path / "sys/kernel/mm/transparent_hugepage"
    thp_dir.mkdir(parents=True)
    (thp_dir / "enabled").write_text(thp + "\n")
    return paths


def model_of(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "m.gguf"
    with path.open("wb") as f:
        f.truncate(size)
    return path


def test_parse_keeps_the_allow_listed_keys_in_bytes_and_adds_both_hugetlb_lines() -> None:
    got = parse_smaps_rollup(ROLLUP)
    assert got["rss_bytes"] == 614400 * 1024
    assert got["anon_huge_bytes"] == 266240 * 1024
    assert got["file_pmd_bytes"] == 4096 * 1024
    assert got["hugetlb_bytes"] == (2048 + 10240) * 1024
    assert got["locked_bytes"] == 307200 * 1024
    assert "Referenced" not in got and "referenced_bytes" not in got


def test_parse_skips_odd_lines_unknown_keys_and_absurd_values() -> None:
    text = "Rss: 12 kB\nRss 13 kB\nAnonymous: -5 kB\nAnonHugePages: 99999999999999999 kB\nEvil_Key: 1 kB\n" \
           "Locked: 7 MB\n" + "x" * 5000
    assert parse_smaps_rollup(text) == {"rss_bytes": 12 * 1024}


def test_reading_gives_the_models_share_in_huge_pages(tmp_path: Path) -> None:
    huge = (266240 + 4096 + 2048 + 10240) * 1024
    mem = read_worker_memory(tree(tmp_path, ROLLUP), 4242, model=model_of(tmp_path, 2 * huge), engine="torch")
    assert mem.error is None and mem.pid == 4242 and mem.thp_mode == "madvise"
    assert mem.model_bytes == 2 * huge
    assert mem.weights_in_huge_pages == pytest.approx(0.5)
    assert mem.note is None  # THP may back them: nothing known stands in the way
    capped = read_worker_memory(tree(tmp_path / "b", ROLLUP), 4242, model=model_of(tmp_path, huge // 3))
    assert capped.weights_in_huge_pages == 1.0


def test_thp_never_says_the_weights_cannot_be_in_huge_pages(tmp_path: Path) -> None:
    rollup = ROLLUP.replace("266240", "0").replace("Private_Hugetlb:   10240", "Private_Hugetlb:       0") \
        .replace("Shared_Hugetlb:     2048", "Shared_Hugetlb:        0")
    mem = read_worker_memory(tree(tmp_path, rollup, thp="always madvise [never]"), 4242,
                             model=model_of(tmp_path, 100 << 20), engine="torch")
    assert mem.thp_mode == "never" and mem.weights_in_huge_pages is not None and mem.weights_in_huge_pages < 0.9
    assert mem.note is not None and "never" in mem.note
    assert "never" in mem.describe()


def test_an_unreadable_or_oversized_rollup_is_an_error_without_figures(tmp_path: Path) -> None:
    gone = read_worker_memory(tree(tmp_path / "a", None), 4242)
    assert gone.error is not None and "smaps_rollup" in gone.error and gone.rss_bytes is None
    big = read_worker_memory(tree(tmp_path / "b", "Rss: 1 kB\n" * (MAX_ROLLUP_BYTES // 10 + 1)), 4242)
    assert big.error is not None and "limit" in big.error and big.rss_bytes is None
    assert big.describe().startswith("unreadable")


@pytest.mark.skipif(os.geteuid() != 0, reason="setfsuid to another user needs CAP_SETUID")
def test_fs_identity_switches_this_thread_and_restores_it(tmp_path: Path) -> None:
    secret = tmp_path / "root-only"
    secret.write_text("x")
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    before = current_fs_ids()
    with fs_identity(65534, 65534):
        assert current_fs_ids() == (65534, 65534)
        with pytest.raises(PermissionError):
            secret.read_text()
    assert current_fs_ids() == before
    assert secret.read_text() == "x"


def test_fs_identity_refuses_ids_out_of_range() -> None:
    from agent.errors import HostError

    with pytest.raises(HostError), fs_identity(-1, 0):
        pass


def test_telemetry_exports_memory_by_kind_and_the_huge_page_share(tmp_path: Path) -> None:
    mem = read_worker_memory(tree(tmp_path, ROLLUP), 4242, model=model_of(tmp_path, 600 << 20))
    sample = WorkerSample(t=1.0, up=True, ready=True, **memory_fields(mem))
    fams = parse_text(format_families(WorkerSampler.families(sample)))
    assert sample_value(fams, "hosttune_worker_memory_bytes", {"kind": "hugetlb"}) == (2048 + 10240) * 1024
    assert sample_value(fams, "hosttune_worker_memory_bytes", {"kind": "anon_huge"}) == 266240 * 1024
    assert sample_value(fams, "hosttune_worker_memory_bytes", {"kind": "locked"}) == 307200 * 1024
    huge = (266240 + 4096 + 2048 + 10240) * 1024
    assert sample_value(fams, "hosttune_worker_weights_huge_pages_ratio") == pytest.approx(huge / (600 << 20),
                                                                                           abs=1e-4)
    failed = mem.model_copy(update={"error": "cannot read"})
    assert memory_fields(failed) == {} and memory_fields(None) == {}


def test_worker_status_prints_where_the_memory_lives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mem = read_worker_memory(tree(tmp_path, ROLLUP), 4242, model=model_of(tmp_path, 600 << 20))
    st = WorkerStatus(state=WorkerState.READY, since=1.0, pid=4242, memory=mem)
    (tmp_path / "state/worker").mkdir(parents=True)
    (tmp_path / "state/worker/state.json").write_text(st.model_dump_json())

    worker_cmd.cmd_status(argparse.Namespace(state_dir=str(tmp_path / "state"), json=False))
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("memory:"))
    assert "THP 260.0 MiB" in line and "hugetlb 12.0 MiB" in line and "weights in huge pages 46%" in line
    worker_cmd.cmd_status(argparse.Namespace(state_dir=str(tmp_path / "state"), json=True))
    assert '"anon_huge_bytes": 272629760' in capsys.readouterr().out


def test_the_unit_keeps_proc_invisible_and_grants_only_what_the_fs_identity_read_needs() -> None:
    text = (Path(__file__).resolve().parents[2] / "systemd/hosttune.service").read_text()
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    assert settings["ProtectProc"] == ["invisible"]
    caps = settings["CapabilityBoundingSet"][0].split()
    assert {"CAP_SETUID", "CAP_SETGID"} <= set(caps)  # setfsuid / setfsgid
    assert "CAP_SYS_PTRACE" not in caps and "CAP_DAC_READ_SEARCH" not in caps
    assert settings["SystemCallFilter"] == ["@system-service"]  # includes @setuid: setfsuid, setfsgid
