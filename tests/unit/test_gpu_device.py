"""agent/gpu: the one device reader that inspect, the GPU tuner and telemetry derive from, and the funnel rule."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.gpu.device import Device, read_system
from agent.gpu.nvml import Nvml, open_nvml
from agent.gpu.simulator import library as nvml_sim
from agent.hostfs import HostPaths
from agent.inspect.gpu import inspect_gpus
from agent.telemetry.gpu import sample_gpus
from agent.tuners.gpu import view_gpu
from tests.support.gpu_sim import H200, REPO, description, h100


@pytest.fixture(autouse=True)
def _no_sim_left_behind() -> Iterator[None]:
    yield
    nvml_sim.uninstall()


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_agent_gpu_imports_pynvml() -> None:
    """The funnel rule: every other module reaches NVML through agent.gpu (nvml.py, device.py, the simulator)."""
    outside = sorted(str(p.relative_to(REPO)) for p in (REPO / "agent").rglob("*.py")
                     if "pynvml" in _imports(p) and (REPO / "agent/gpu") not in p.parents)
    assert outside == []


def test_inspect_telemetry_and_tuner_read_the_same_gpus(tmp_path: Path) -> None:
    nvml_sim.install(description(H200, h100(1, "9A")))
    nvml = Nvml()
    gpus, status = inspect_gpus(HostPaths(procfs=tmp_path, sysfs=tmp_path, rootfs=tmp_path), nvml)
    samples = sample_gpus(nvml)
    views = [view_gpu(nvml, i) for i in range(nvml.device_count())]
    assert status.driver_version == read_system(nvml).driver_version == "570.124.06"
    for gpu, sample, view in zip(gpus, samples, views, strict=True):
        assert gpu.uuid == sample.uuid == view.uuid and gpu.name == sample.name == view.name
        assert gpu.clocks.sm_mhz == sample.sm_clock_mhz == view.sm_mhz
        assert gpu.max_clocks.sm_mhz == view.max_sm_mhz == 1980
        assert gpu.power.limit_mw == view.power_limit_mw and gpu.persistence_mode == view.persistence
        assert gpu.memory_used_bytes == sample.mem_used_bytes
    assert [g.persistence_mode for g in gpus] == [False, True]
    assert views[1].graphics_clocks is not None and views[1].graphics_clocks[0] == 1980
    assert views[1].graphics_clocks[-1] == 345 and views[1].memory_clocks == [2619]


def test_supported_clocks_say_what_nvml_does_not_list() -> None:
    partial = dict(H200, not_supported=["nvmlDeviceGetSupportedGraphicsClocks"])
    nvml_sim.install(description(partial, dict(h100(1, "9A"), not_supported=["nvmlDeviceGetSupportedMemoryClocks"])))
    nvml = open_nvml()
    assert Device.open(nvml, 0).supported_clocks() == {3201: None}
    assert Device.open(nvml, 1).supported_clocks() is None
    assert view_gpu(nvml, 0).graphics_clocks is None and view_gpu(nvml, 0).memory_clocks == [3201]


def test_a_device_opened_by_uuid_is_that_gpu_whatever_the_index() -> None:
    nvml_sim.install(description(H200, h100(1, "9A")))
    nvml = open_nvml()
    device = Device.open(nvml, 0, uuid=h100(1, "9A")["uuid"])
    assert device.name() == "NVIDIA H100 80GB HBM3" and device.pci_address() == "0000:9a:00.0"
