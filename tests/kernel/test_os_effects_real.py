"""bench/os_effects.py on the real host: one change, one round, a tiny prompt and n_predict (figures are not the
point; the mechanism is). The hugetlbfs arm really serves from the 2 MiB pool (the server's smaps_rollup shows
Hugetlb), every value the run set is back as found afterwards (the THP mode, the pool, the hugetlbfs mounts, the
model disk's read_ahead_kb), and its found record is gone. A record left by a killed run makes the next run refuse
to start, and --restore puts back what the record says."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.bench.hostsnap import take_snapshot
from agent.bench.os_arms import THP_FILE, FoundHost, find_host, keep_found, run_dir
from agent.fsio import read_bracketed
from agent.hostfs import HostPaths
from agent.model_files import default_model_path
from agent.worker.placement import queue_disk_of_file

pytestmark = [pytest.mark.root, pytest.mark.kernel, pytest.mark.engine, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to set THP, the pool and read_ahead_kb"),
              pytest.mark.skipif("hugetlbfs" not in Path("/proc/filesystems").read_text(),
                                 reason="this kernel has no hugetlbfs")]
REPO = Path(__file__).resolve().parents[2]
LIVE = HostPaths.live()
SCRIPT = [sys.executable, str(REPO / "bench" / "os_effects.py")]


def run_script(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    """The script in its own session: on timeout SIGTERM to its process group (the script puts the host back on
    SIGTERM, in its finally), SIGKILL only if it has not ended 60 s later."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([*SCRIPT, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_one_round_of_a_change_leaves_the_host_as_found(tmp_path: Path) -> None:
    assert not run_dir(LIVE).exists(), f"{run_dir(LIVE)} exists: an earlier run is not cleaned up"
    before = take_snapshot(LIVE, [])
    try:
        one_round(tmp_path, before)
    finally:   # a failed assert or a timeout: whatever the run left is put back before the next test
        restored = run_script("--restore", timeout=120)
        assert restored.returncode == 0, restored.stderr[-3000:]
        assert take_snapshot(LIVE, []) == before
        assert not run_dir(LIVE).exists()


def one_round(tmp_path: Path, before: dict[str, str]) -> None:
    out = tmp_path / "report.json"
    disk = find_host(LIVE, queue_disk_of_file(LIVE, default_model_path())).disk
    changes = ["hugetlbfs", "readahead"] if disk is not None else ["hugetlbfs"]  # no block device: no readahead
    done = run_script("--changes", ",".join(changes), "--rounds", "1", "--requests", "1", "--n-predict", "4",
                      "--prompt-tokens", "32", "--resamples", "2000", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert take_snapshot(LIVE, []) == before
    assert not run_dir(LIVE).exists()
    report = json.loads(out.read_text())
    assert report["host"]["restored"] is True and report["host"]["diff"] == []
    rows = {r["arm"]: r for r in report["rounds"]}
    assert set(rows) == {"found", *changes}
    model_mib = Path(report["model"]).stat().st_size / (1 << 20)
    assert rows["hugetlbfs"]["hugetlb_mib"] >= 0.9 * model_mib   # served from the pool
    assert rows["found"]["hugetlb_mib"] == 0
    assert rows["found"]["cold_resident"] is not None and rows["found"]["cold_resident"] < 0.5  # the drop worked
    assert report["prompt_tokens"] == 32
    assert set(report["changes"]) == set(changes)
    assert report["changes"]["hugetlbfs"]["ratios"]["decode_tok_s"]["ratio"] is not None
    assert "host left as found" in done.stderr


def test_a_killed_run_is_put_right_by_restore() -> None:
    where = run_dir(LIVE)
    assert not where.exists(), f"{where} exists: an earlier run is not cleaned up"
    found = find_host(LIVE, None)
    other = "never" if found.thp != "never" else "madvise"
    try:
        keep_found(FoundHost(thp=found.thp, pool_pages=found.pool_pages, disk=None, readahead_kb=None), where)
        record = json.loads((where / "found.json").read_text())
        record["set"]["thp"] = other   # marked before the write, as a run killed inside a THP arm leaves it
        (where / "found.json").write_text(json.dumps(record))
        LIVE.sys(THP_FILE).write_text(other)
        refused = run_script("--changes", "thp-always", "--rounds", "1")
        assert refused.returncode == 1 and "--restore" in refused.stderr
        assert read_bracketed(LIVE.sys(THP_FILE))[0] == other  # the refusal wrote nothing
        restored = run_script("--restore")
        assert restored.returncode == 0, restored.stderr
        assert read_bracketed(LIVE.sys(THP_FILE))[0] == found.thp
        assert not where.exists()
    finally:
        LIVE.sys(THP_FILE).write_text(found.thp)
        (where / "found.json").unlink(missing_ok=True)
        if where.is_dir():
            where.rmdir()
