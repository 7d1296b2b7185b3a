"""scripts/gpu-check.sh (agent.commands.gpu_check): read-only on a GPU machine, proved here on the NVML simulator."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands import gpu_check
from agent.errors import HostError
from agent.gpu.nvml import open_nvml
from agent.gpu.simulator import library as nvml_sim
from agent.hostfs import HostPaths
from agent.inspect.gpu import inspect_gpus
from agent.inspect.models import Gpu, GpuStatus
from agent.tuners.gpu import GpuTuner
from tests.support.gpu_sim import REPO, SERVER_8GPU


@pytest.fixture(autouse=True)
def _fresh_nvml() -> Iterator[None]:
    yield
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
    out = io.StringIO()
    assert gpu_check.run(missing, None, 1, 0.0, out, require_gpu=True) == 1
    assert "FAIL: no GPU seen" in out.getvalue()


# --- the nvidia-smi cross-check (through sh), with a stand-in nvidia-smi on PATH ---------------------------------

SMI_SERVER = [(i, g["uuid"], g["name"]) for i, g in enumerate(json.loads(SERVER_8GPU.read_text())["gpus"])]


def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stdout: str, stderr: str = "", rc: int = 0) -> Path:
    """Put an nvidia-smi first on PATH that prints `stdout`/`stderr`, exits `rc` and records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "out.txt").write_text(stdout)
    (tmp_path / "err.txt").write_text(stderr)
    script = bin_dir / "nvidia-smi"
    script.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args.txt\ncat {tmp_path}/out.txt\n'
                      f'cat {tmp_path}/err.txt >&2\nexit {rc}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '')}")
    return tmp_path / "args.txt"


def smi_lines(gpus: list[tuple[int, str, str]]) -> str:
    return "".join(f"{i}, {uuid}, {name}\n" for i, uuid, name in gpus)


def nvml_gpus() -> tuple[list[Gpu], GpuStatus]:
    return inspect_gpus(HostPaths.live(), open_nvml(SERVER_8GPU, dry_run=True))


def test_nvidia_smi_is_asked_read_only_and_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = fake_smi(tmp_path, monkeypatch, "WARNING: infoROM is corrupted at gpu 0000:04:00.0\n"
                    "0, GPU-aaaa, NVIDIA H100 80GB HBM3\n\n1, GPU-bbbb, NVIDIA H200, rev 2\n")
    assert gpu_check.nvidia_smi_gpus() == [(0, "GPU-aaaa", "NVIDIA H100 80GB HBM3"),
                                           (1, "GPU-bbbb", "NVIDIA H200, rev 2")]
    assert args.read_text().split() == ["--query-gpu=index,uuid,name", "--format=csv,noheader"]


def test_nvidia_smi_failing_is_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(tmp_path, monkeypatch, "", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
             "driver. Make sure that the latest NVIDIA driver is installed and running.\n", rc=9)
    with pytest.raises(HostError) as err:
        gpu_check.nvidia_smi_gpus()
    assert not isinstance(err.value, gpu_check.NvidiaSmiMissing)
    assert err.value.message.startswith("nvidia-smi exited with status 9: NVIDIA-SMI has failed because")


def test_nvidia_smi_missing_is_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(gpu_check.NvidiaSmiMissing, match="nvidia-smi not found on PATH"):
        gpu_check.nvidia_smi_gpus()
    out = io.StringIO()
    gpus, status = nvml_gpus()
    assert gpu_check.cross_check_nvidia_smi(gpus, status, out) == []
    assert "cross-check skipped" in out.getvalue()


def test_cross_check_agrees_with_nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(tmp_path, monkeypatch, smi_lines(SMI_SERVER))
    out = io.StringIO()
    gpus, status = nvml_gpus()
    assert gpu_check.cross_check_nvidia_smi(gpus, status, out) == []
    assert "== nvidia-smi: 8 GPU(s)" in out.getvalue()


def test_cross_check_names_gpus_only_one_side_sees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stranger = (7, "GPU-00000000-0000-4000-8000-0000000000ff", "NVIDIA H100 80GB HBM3")
    fake_smi(tmp_path, monkeypatch, smi_lines([*SMI_SERVER[:7], stranger]))
    gpus, status = nvml_gpus()
    problems = gpu_check.cross_check_nvidia_smi(gpus, status, io.StringIO())
    assert problems == [f"nvidia-smi lists GPU 7 {stranger[1]} ({stranger[2]}) that NVML did not",
                        f"NVML lists GPU 7 {SMI_SERVER[7][1]} ({SMI_SERVER[7][2]}) that nvidia-smi does not"]


def test_cross_check_fails_when_nvidia_smi_fails_but_nvml_sees_gpus(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(tmp_path, monkeypatch, "", "Unable to determine the device handle for GPU0000:18:00.0: Unknown Error\n",
             rc=15)
    gpus, status = nvml_gpus()
    assert gpu_check.cross_check_nvidia_smi(gpus, status, io.StringIO()) == [
        "NVML lists 8 GPU(s) but nvidia-smi exited with status 15: Unable to determine the device handle for "
        "GPU0000:18:00.0: Unknown Error"]


def test_cross_check_on_a_host_without_driver_only_notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(tmp_path, monkeypatch, "", "NVIDIA-SMI has failed because it couldn't communicate with the driver.\n",
             rc=9)
    missing = tmp_path / "nvml.json"
    missing.write_text('{"library": "missing"}')
    gpus, status = inspect_gpus(HostPaths.live(), open_nvml(missing, dry_run=True))
    out = io.StringIO()
    assert gpu_check.cross_check_nvidia_smi(gpus, status, out) == []
    assert "nvidia-smi exited with status 9" in out.getvalue() and "NVML library not found" in out.getvalue()
