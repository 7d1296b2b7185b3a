"""kill -9 at every host write on the real kernel: a multi-tuner policy (sysctl, 2M hugepages, THP, the queue of a
fresh loop device) is applied with HOSTTUNE_CRASH_AFTER_WRITES=N for every N from 1 to its number of writes;
the process dies by SIGKILL, `hosttune revert` runs, and every touched value must equal the snapshot taken
before. Then the same for a revert killed after each of its writes, finished by a second revert."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.tuning_support import (
    PROC_SYS,
    SYS,
    fresh_loop_device,
    hosttune,
    kernel_tier_lock,
    other_choice,
    restore,
    snapshot,
)

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

HP2M = SYS / "kernel/mm/hugepages/hugepages-2048kB"
THP = SYS / "kernel/mm/transparent_hugepage"


@pytest.fixture
def loop() -> Iterator[str]:
    with kernel_tier_lock(), fresh_loop_device() as name:
        yield name


def setup(tmp_path: Path, loop: str) -> tuple[Path, list[Path], int]:
    queue = SYS / "block" / loop / "queue"
    (queue / "nr_requests").write_text("100")  # a non-default original the scheduler switch would lose
    files = [PROC_SYS / "vm/swappiness", PROC_SYS / "vm/dirty_background_ratio", HP2M / "nr_hugepages",
             SYS / "devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages", THP / "enabled",
             THP / "defrag", queue / "scheduler", queue / "nr_requests", queue / "read_ahead_kb"]
    swappiness = 11 if (PROC_SYS / "vm/swappiness").read_text() != "11\n" else 12
    background = 4 if (PROC_SYS / "vm/dirty_background_ratio").read_text() != "4\n" else 6
    policy = tmp_path / "multi.yaml"
    policy.write_text(
        f"name: crash-multi\n"
        f"sysctl:\n  vm.swappiness: {swappiness}\n  vm.dirty_background_ratio: {background}\n"
        f"hugepages:\n  - {{size: 2M, count: {int((HP2M / 'nr_hugepages').read_text()) + 4}}}\n"
        f"thp: {{enabled: {other_choice(THP / 'enabled')}}}\n"
        f"block:\n  - match: {{name: {loop}}}\n    scheduler: {other_choice(queue / 'scheduler')}\n"
        f"    nr_requests: 64\n    read_ahead_kb: 2048\n")
    # 2 sysctls + 1 pool + 1 THP + scheduler, nr_requests, read_ahead_kb
    return policy, files, 7


def count_writes(tmp_path: Path, policy: Path, files: list[Path]) -> int:
    before = snapshot(files)
    state = tmp_path / "count-state"
    r = hosttune(state, "apply", str(policy), "--json")
    assert r.returncode == 0, r.stderr
    assert hosttune(state, "revert").returncode == 0
    assert snapshot(files) == before
    return int(json.loads(r.stdout)["writes"])


def test_sigkill_after_each_apply_write_then_revert(tmp_path: Path, loop: str) -> None:
    policy, files, expected = setup(tmp_path, loop)
    before = snapshot(files)
    try:
        total = count_writes(tmp_path, policy, files)
        assert total == expected
        for n in range(1, total + 1):
            state = tmp_path / f"state-{n}"
            died = hosttune(state, "apply", str(policy), env={"HOSTTUNE_CRASH_AFTER_WRITES": str(n)})
            assert died.returncode == -signal.SIGKILL, (n, died.stderr)
            assert snapshot(files) != before, n
            r = hosttune(state, "revert")
            assert r.returncode == 0, (n, r.stdout, r.stderr)
            assert "rolled back interrupted apply" in r.stdout, n
            assert snapshot(files) == before, n
    finally:
        restore(before)


def test_sigkill_during_revert_then_revert_again(tmp_path: Path, loop: str) -> None:
    policy, files, expected = setup(tmp_path, loop)
    before = snapshot(files)
    try:
        for k in range(1, expected + 1):
            state = tmp_path / f"state-{k}"
            assert hosttune(state, "apply", str(policy)).returncode == 0
            died = hosttune(state, "revert", env={"HOSTTUNE_CRASH_AFTER_WRITES": str(k)})
            assert died.returncode == -signal.SIGKILL, (k, died.stdout, died.stderr)
            assert json.loads(hosttune(state, "status", "--json").stdout)["interrupted"], k
            r = hosttune(state, "revert")
            assert r.returncode == 0, (k, r.stdout, r.stderr)
            assert snapshot(files) == before, k
    finally:
        restore(before)
