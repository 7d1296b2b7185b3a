"""kill -9 at every write point of ONE policy that touches every tuner: sysctl, hugepages, THP, block (read-ahead
and scheduler, whose switch also disturbs nr_requests), CPU (governor and EPP on a tree with cpufreq) and GPU
(the NVML simulator with a state file, so the simulated GPUs outlive the killed process the way real ones do).

For each injection point n (HOSTTUNE_CRASH_AFTER_WRITES=n, the writer SIGKILLs itself right after its n-th host
write): apply dies, revert restores the tree byte for byte and the GPUs' mutable state exactly. Then the same
for a revert killed at each of its write points, followed by a second revert. tests/process/test_engine_crash.py
does this for three OS tuners; this extends it to all of them (issue 10). Run with -s to see the counts.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from agent.gpu.simulator.description import SimGpu
from agent.hostfs import HostPaths
from tests.process.test_engine_cli import hosttune
from tests.support.trees import FIXTURE_HOSTS, make_tree, tree_state

pytestmark = pytest.mark.slow

GPU_DESCRIPTION = FIXTURE_HOSTS / "server-2s-8gpu" / "nvml.json"
POLICY = """\
name: crash-every-tuner
sysctl:
  vm.swappiness: 5
  vm.dirty_ratio: 10
hugepages:
  - {size: 2M, count: 16}
thp: {enabled: never, defrag: never}
cpu: {governor: performance, energy_performance_preference: performance}
block:
  - match: {name: "nvme*"}
    read_ahead_kb: 4096
    scheduler: none
gpu:
  - select: {index: 0}
    locked_clocks: max
    power_limit_w: 600
    persistence_mode: true
  - select: {index: 1}
    memory_locked_clocks: max
"""


class Run:
    """One fixture host (the conftest "server" tree: cpufreq, NVMe, THP, hugepages) plus simulated GPUs whose
    state lives in a file, and the hosttune CLI pointed at both."""

    def __init__(self, where: Path) -> None:
        self.root = where / "host"
        self.paths: HostPaths = make_tree("server", self.root)
        self.state = where / "state"
        self.sim = where / "nvml.json"
        shutil.copy(GPU_DESCRIPTION, self.sim)
        self.gpu_file = where / "gpu-state.json"
        self.policy = where / "policy.yaml"
        self.policy.write_text(POLICY)

    def cli(self, *args: str, crash_after: int | None = None) -> Any:
        env = {"HOSTTUNE_NVML_SIM_STATE": str(self.gpu_file)}
        if crash_after is not None:
            env["HOSTTUNE_CRASH_AFTER_WRITES"] = str(crash_after)
        return hosttune(self.paths, self.state, *args, "--nvml-sim", str(self.sim), env=env)

    def gpus(self) -> dict[str, dict[str, Any]]:
        """The simulated GPUs' mutable settings (the description's values before anything was written)."""
        described = {g["uuid"]: SimGpu(i, g, f"gpus.{i}").initial_state()
                     for i, g in enumerate(json.loads(self.sim.read_text())["gpus"])}
        if not self.gpu_file.exists():
            return described
        saved = json.loads(self.gpu_file.read_text())["gpus"]
        return {uuid: {k: saved.get(uuid, {}).get(k, v) for k, v in values.items()}
                for uuid, values in described.items()}

    def snapshot(self) -> tuple[dict[str, bytes], dict[str, dict[str, Any]]]:
        return tree_state(self.root), self.gpus()


def applied_writes(tmp_path: Path) -> tuple[int, Run]:
    run = Run(tmp_path / "count")
    before = run.snapshot()
    r = run.cli("apply", str(run.policy), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    after = run.snapshot()
    assert after[0] != before[0] and after[1] != before[1], "the policy must change files and GPUs"
    return int(doc["writes"]), run


def test_sigkill_at_every_write_of_every_tuner_then_revert(tmp_path: Path) -> None:
    total, counted = applied_writes(tmp_path)
    changes = json.loads(counted.cli("status", "--json").stdout)
    assert changes["originals"] >= total
    assert total >= 19, total  # 2 sysctl + 1 hugepage pool + 2 THP + 4 CPUs x 2 + NVMe scheduler and read-ahead + 4 GPU
    for n in range(1, total + 1):
        run = Run(tmp_path / f"a{n}")
        before = run.snapshot()
        died = run.cli("apply", str(run.policy), crash_after=n)
        assert died.returncode == -signal.SIGKILL, (n, died.stdout, died.stderr)
        assert run.snapshot() != before, n
        reverted = run.cli("revert")
        assert reverted.returncode == 0, (n, reverted.stdout, reverted.stderr)
        assert run.snapshot() == before, n
    print(f"\napply injection points: {total}, each reverted byte-exact (files) and exact (GPU state)")


def test_sigkill_during_revert_of_every_tuner_then_revert_again(tmp_path: Path) -> None:
    total, counted = applied_writes(tmp_path)
    reverted = counted.cli("revert", "--json")
    assert reverted.returncode == 0, reverted.stderr
    points = 0
    for k in range(1, 2 * total + 2):
        run = Run(tmp_path / f"r{k}")
        before = run.snapshot()
        assert run.cli("apply", str(run.policy)).returncode == 0
        died = run.cli("revert", crash_after=k)
        if died.returncode == 0:  # revert needed fewer than k writes: every point is covered
            assert run.snapshot() == before
            break
        assert died.returncode == -signal.SIGKILL, (k, died.stdout, died.stderr)
        points += 1
        again = run.cli("revert")
        assert again.returncode == 0, (k, again.stdout, again.stderr)
        assert run.snapshot() == before, k
    else:
        pytest.fail(f"revert never completed within {2 * total + 1} writes")
    assert points >= total, points
    print(f"\nrevert injection points: {points}, each followed by a second revert that restored everything")
