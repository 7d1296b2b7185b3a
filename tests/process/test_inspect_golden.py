"""Golden tests: the real CLI on every fixture host must reproduce that host's expected.json.

`pytest tests/process/test_inspect_golden.py --update-golden` rewrites the golden files; review the diff before
committing it, because a golden file only proves something when a person has checked it against the tree.
"""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.inspect.models import HostFacts
from tests.support.inspect_cli import FIXTURE_HOSTS, SCENARIOS, run_inspect, tree_args

REPO = Path(__file__).resolve().parents[2]


def test_the_three_required_scenarios_exist() -> None:
    assert {"vm-1node", "server-2s-8gpu", "laptop-sata"} <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_inspect_json_matches_golden(scenario: str, update_golden: bool) -> None:
    root = FIXTURE_HOSTS / scenario
    assert (root / "nvml.json").exists(), "every scenario pins its GPUs (or their absence) with nvml.json"
    proc = run_inspect("--json", *tree_args(root))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    HostFacts.model_validate(got)  # the output honours the published schema
    assert got["errors"] == [], "no collector may fail on a fixture host"
    golden = root / "expected.json"
    if update_golden:
        golden.write_text(json.dumps(got, indent=2) + "\n")
        return
    assert golden.exists(), f"{golden} missing: run pytest {__file__} --update-golden"
    want = json.loads(golden.read_text())
    if got != want:
        diff = difflib.unified_diff(json.dumps(want, indent=2).splitlines(), json.dumps(got, indent=2).splitlines(),
                                    "expected.json", "hosttune inspect --json", lineterm="", n=2)
        pytest.fail(f"{scenario}: output differs from its golden file\n" + "\n".join(list(diff)[:80]))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_capture_of_a_tree_replays_to_the_same_facts(scenario: str, tmp_path: Path) -> None:
    """scripts/capture-host.py copies every file inspection reads: inspecting the copy gives the same facts."""
    src = FIXTURE_HOSTS / scenario
    out = tmp_path / "captured"
    cap = subprocess.run([sys.executable, str(REPO / "scripts/capture-host.py"), str(out), "--procfs",
                          str(src / "proc"), "--sysfs", str(src / "sys"), "--rootfs", str(src)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert cap.returncode == 0, cap.stderr
    nvml = ["--nvml-sim", str(src / "nvml.json")]
    original = run_inspect("--json", "--rootfs", str(src), "--procfs", str(src / "proc"), "--sysfs",
                           str(src / "sys"), *nvml)
    replay = run_inspect("--json", "--rootfs", str(out), "--procfs", str(out / "proc"), "--sysfs",
                         str(out / "sys"), *nvml)
    assert original.returncode == 0 and replay.returncode == 0, original.stderr + replay.stderr
    assert json.loads(replay.stdout) == json.loads(original.stdout)
    # and the capture kept nothing beyond comm+cmdline of processes
    for pid_dir in (out / "proc").iterdir():
        if pid_dir.name.isdigit():
            assert sorted(p.name for p in pid_dir.iterdir()) == ["cmdline", "comm"]


def test_capture_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine\n")
    cap = subprocess.run([sys.executable, str(REPO / "scripts/capture-host.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert cap.returncode == 2
    assert (tmp_path / "keep.txt").read_text() == "mine\n"
