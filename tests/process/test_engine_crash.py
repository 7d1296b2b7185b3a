"""kill -9 at every host write, on a fixture tree: apply dies after its N-th write (HOSTTUNE_CRASH_AFTER_WRITES),
revert then brings the tree back byte for byte; the same for a revert killed mid-way. The kernel tier repeats
this on the real kernel (tests/kernel/test_crash_real.py)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.process.test_engine_cli import POLICY, hosttune
from tests.support.trees import make_tree, tree_state

pytestmark = pytest.mark.slow


def count_writes(tmp_path: Path, policy: Path) -> int:
    paths = make_tree("server", tmp_path / "count")
    r = hosttune(paths, tmp_path / "count-state", "apply", str(policy), "--json")
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)["writes"])


def test_sigkill_after_every_apply_write_then_revert(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    total = count_writes(tmp_path, policy)
    assert total == 8
    for n in range(1, total + 1):
        paths = make_tree("server", tmp_path / f"h{n}")
        state = tmp_path / f"s{n}"
        before = tree_state(tmp_path / f"h{n}")
        died = hosttune(paths, state, "apply", str(policy), env={"HOSTTUNE_CRASH_AFTER_WRITES": str(n)})
        assert died.returncode == -signal.SIGKILL, (n, died.stderr)
        changed = tree_state(tmp_path / f"h{n}")
        assert changed != before, n
        status = json.loads(hosttune(paths, state, "status", "--json").stdout)
        assert status["interrupted"], n
        reverted = hosttune(paths, state, "revert")
        assert reverted.returncode == 0, (n, reverted.stdout, reverted.stderr)
        assert "rolled back interrupted apply" in reverted.stdout
        assert tree_state(tmp_path / f"h{n}") == before, n


def test_sigkill_during_revert_then_revert_again(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    total = 8
    for k in range(1, total + 1):
        paths = make_tree("server", tmp_path / f"h{k}")
        state = tmp_path / f"s{k}"
        before = tree_state(tmp_path / f"h{k}")
        assert hosttune(paths, state, "apply", str(policy)).returncode == 0
        died = hosttune(paths, state, "revert", env={"HOSTTUNE_CRASH_AFTER_WRITES": str(k)})
        assert died.returncode == -signal.SIGKILL, (k, died.stdout, died.stderr)
        again = hosttune(paths, state, "revert")
        assert again.returncode == 0, (k, again.stdout, again.stderr)
        assert tree_state(tmp_path / f"h{k}") == before, k


def test_sigkill_mid_apply_then_apply_again_recovers_first(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    paths = make_tree("server", tmp_path / "h")
    state = tmp_path / "s"
    before = tree_state(tmp_path / "h")
    assert hosttune(paths, state, "apply", str(policy), env={"HOSTTUNE_CRASH_AFTER_WRITES": "4"}).returncode == -9
    again = hosttune(paths, state, "apply", str(policy), "--json")
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["recovered"].startswith("rolled back interrupted apply")
    assert doc["writes"] == 4 + 8  # 4 rollback writes, then the full apply
    assert hosttune(paths, state, "verify").returncode == 0
    assert hosttune(paths, state, "revert").returncode == 0
    assert tree_state(tmp_path / "h") == before
