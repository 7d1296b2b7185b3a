"""scripts/gpu-check.sh (agent.gpu_check): read-only on a GPU machine, proved here on the NVML simulator."""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import gpu_check, nvml, nvml_sim
from agent.tuners.gpu import GpuTuner
from tests.support.gpu_sim import REPO, SERVER_8GPU


@pytest.fixture(autouse=True)
def _fresh_nvml() -> Iterator[None]:
    nvml.use_session(None)
    yield
    nvml.use_session(None)
    nvml_sim.uninstall()


def test_script_on_the_simulated_8_gpu_server() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTTUNE_")}
    done = subprocess.run([str(REPO / "scripts/gpu-check.sh"), "--sim", str(SERVER_8GPU), "--samples", "2",
                           "--interval", "0.1", "--require-gpu"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "gpus=8" in out and "dry-run refusal: ok" in out
    assert "== mutating NVML calls: 0 (dry_run=True, simulated=True)" in out
    assert out.count("NVIDIA H100 80GB HBM3") >= 8
    assert out.rstrip().endswith("gpu-check: ok, read-only")


def test_a_tuner_that_ignores_dry_run_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GpuTuner, "_refuse_if_read_only", lambda self, target: None)
    out = io.StringIO()
    rc = gpu_check.run(SERVER_8GPU, None, 1, 0.0, out)
    assert rc == 1
    assert "FAIL: the GPU tuner did not refuse" in out.getvalue()
    assert "FAIL: the refused apply journaled or counted a write" in out.getvalue()


def test_no_gpu_is_fine_unless_required(tmp_path: Path) -> None:
    missing = tmp_path / "nvml.json"
    missing.write_text('{"library": "missing"}')
    out = io.StringIO()
    assert gpu_check.run(missing, None, 1, 0.0, out) == 0
    assert "no NVIDIA GPU" in out.getvalue()
    nvml.use_session(None)
    out = io.StringIO()
    assert gpu_check.run(missing, None, 1, 0.0, out, require_gpu=True) == 1
    assert "FAIL: no GPU seen" in out.getvalue()
