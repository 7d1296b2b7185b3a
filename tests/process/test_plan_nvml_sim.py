"""`hosttune plan --nvml-sim FILE` plans the gpu section against the simulated GPUs of a fixture host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures/hosts/server-2s-8gpu"


def _plan(tmp_path: Path, *extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "agent", "plan", "llm-gpu-throughput", "--json",
         "--procfs", str(FIXTURE / "proc"), "--sysfs", str(FIXTURE / "sys"), "--rootfs", str(FIXTURE),
         "--state-dir", str(tmp_path / "state"), *extra],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_plan_uses_the_simulated_gpus(tmp_path: Path) -> None:
    described = json.loads((FIXTURE / "nvml.json").read_text())["gpus"]
    plan = _plan(tmp_path, "--nvml-sim", str(FIXTURE / "nvml.json"))
    gpu_targets = {c["target"].split("/")[0] for c in plan["changes"] if c["tuner"] == "gpu"}
    assert gpu_targets == {f"gpu{i}" for i in range(len(described))}
