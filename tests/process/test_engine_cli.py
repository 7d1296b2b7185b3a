"""The plan/apply/verify/revert/status commands as a user runs them (subprocess), on a fixture tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.hostfs import HostPaths
from tests.support.trees import tree_state

POLICY = """\
name: cli-test
sysctl:
  vm.swappiness: 1
  vm.max_map_count: ">=1048576"
hugepages:
  - {size: 2M, count: 16}
thp: {enabled: never}
block:
  - match: {name: "nvme*"}
    scheduler: kyber
    nr_requests: 64
    read_ahead_kb: 4096
    udev_rule: true
"""


def hosttune(paths: HostPaths, state: Path, *args: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    roots = ["--procfs", str(paths.procfs), "--sysfs", str(paths.sysfs), "--rootfs", str(paths.rootfs),
             "--state-dir", str(state)]
    return subprocess.run([sys.executable, "-m", "agent", args[0], *args[1:], *roots], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(POLICY)
    return p


@pytest.mark.host("server")
def test_round_trip(host: HostPaths, tmp_path: Path, policy_file: Path) -> None:
    state = tmp_path / "state"
    root = host.procfs.parent
    before = tree_state(root)

    plan = hosttune(host, state, "plan", str(policy_file), "--json")
    assert plan.returncode == 0, plan.stderr
    doc = json.loads(plan.stdout)
    assert doc["counts"]["change"] == 8 and doc["policy"] == "cli-test"
    assert tree_state(root) == before and not state.exists()

    human = hosttune(host, state, "plan", str(policy_file))
    assert human.stdout.splitlines()[0].split() == ["tuner", "target", "current", "desired", "action", "reason"]
    assert "8 to change" in human.stdout.splitlines()[-1]

    applied = hosttune(host, state, "apply", str(policy_file), "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["writes"] == 8
    assert (state.stat().st_mode & 0o777) == 0o700

    again = hosttune(host, state, "apply", str(policy_file))
    assert again.returncode == 0 and "0 host writes" in again.stdout

    assert hosttune(host, state, "verify").returncode == 0
    status = json.loads(hosttune(host, state, "status", "--json").stdout)
    assert status["applied"]["policy"] == "cli-test" and status["originals"] == 8 and not status["interrupted"]

    host.sysctl("vm.swappiness").write_text("10\n")
    drift = hosttune(host, state, "verify", "--json")
    assert drift.returncode == 1
    assert [i["target"] for i in json.loads(drift.stdout)["items"] if i["state"] == "drift"] == ["vm.swappiness"]

    # swappiness was changed by "someone" after apply: revert leaves it, says so and exits 3; --force restores it
    reverted = hosttune(host, state, "revert")
    assert reverted.returncode == 3, reverted.stderr
    assert ("SKIPPED   sysctl:vm.swappiness: now '10', hosttune set '1' (changed by someone else; --force restores "
            "the original '60')") in reverted.stdout
    assert host.sysctl("vm.swappiness").read_text() == "10\n"
    forced = hosttune(host, state, "revert", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "restored  sysctl:vm.swappiness" in forced.stdout
    assert tree_state(root) == before
    assert "nothing to revert" in hosttune(host, state, "revert").stdout


@pytest.mark.parametrize(("edit", "needle", "field", "message"), [
    (lambda t: t.replace("vm.swappiness: 1", "vm.nosuch_key: 1"), "vm.nosuch_key", "sysctl.vm.nosuch_key",
     "no sysctl"),
    (lambda t: t.replace("scheduler: kyber", "scheduler: noop"), "scheduler: noop", "block.0.scheduler",
     "does not offer"),
    (lambda t: t.replace("count: 16", "count: -4"), "count: -4", "hugepages.0.count", ""),
    (lambda t: t.replace("thp: {enabled: never}", "thp: {enabled: sometimes}"), "thp:", "thp.enabled", ""),
    (lambda t: t.replace("read_ahead_kb: 4096", "read_ahead_kb: lots"), "read_ahead_kb", "block.0.read_ahead_kb",
     ""),
    (lambda t: t + "frobnicate: 1\n", "frobnicate", "frobnicate", ""),
    (lambda t: t.replace("vm.swappiness: 1", '"../../etc/x": 1'), "../../etc/x", "sysctl", ""),
])
def test_bad_policy_exits_2_with_file_line_field_and_writes_nothing(
        host: HostPaths, tmp_path: Path, policy_file: Path, edit, needle: str, field: str, message: str) -> None:
    text = edit(POLICY)
    policy_file.write_text(text)
    state = tmp_path / "state"
    before = tree_state(host.procfs.parent)
    for command in ("plan", "apply"):
        r = hosttune(host, state, command, str(policy_file))
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        err = r.stderr.strip().splitlines()
        assert len(err) == 1, r.stderr
        assert err[0].startswith(f"hosttune: error: {policy_file}:{line_of(text, needle)}: {field}"), err[0]
        assert message in err[0]
    assert tree_state(host.procfs.parent) == before
    assert not (state / "journal.json").exists()


@pytest.mark.host("server")
def test_failed_apply_exits_1_naming_the_tunable(host: HostPaths, tmp_path: Path, policy_file: Path) -> None:
    state = tmp_path / "state"
    before = tree_state(host.procfs.parent)
    target = host.sys("block/nvme0n1/queue/read_ahead_kb")
    if subprocess.run(["chattr", "+i", str(target)], capture_output=True, timeout=10).returncode != 0:
        pytest.skip("chattr +i not supported here")
    try:
        r = hosttune(host, state, "apply", str(policy_file))
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True, timeout=10)
    assert r.returncode == 1
    assert "block/nvme0n1/read_ahead_kb" in r.stderr and "rolled back" in r.stderr
    assert f"{policy_file}:{line_of(POLICY, 'read_ahead_kb')}" in r.stderr
    assert tree_state(host.procfs.parent) == before


def test_help_has_examples() -> None:
    for command in ("plan", "apply", "verify", "revert", "status"):
        r = subprocess.run([sys.executable, "-m", "agent", command, "--help"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and "examples:" in r.stdout and "--state-dir" in r.stdout
