"""inspect_gpus: facts through the real pynvml binding on the simulator, NUMA nodes from a tmp sysfs tree."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import HostError, InputError
from agent.gpu.device import sysfs_pci_address
from agent.gpu.nvml import Nvml, open_nvml
from agent.gpu.simulator import library as nvml_sim
from agent.hostfs import HostPaths
from agent.inspect.gpu import inspect_gpus
from tests.support.gpu_sim import H200, H200_GRAPHICS, SERVER_8GPU, description, h100


@pytest.fixture(autouse=True)
def _no_sim_left_behind() -> Iterator[None]:
    yield
    nvml_sim.uninstall()


def _host(tmp_path: Path, numa: dict[str, str]) -> HostPaths:
    """A sysfs tree with one PCI device dir per address, numa_node holding the given text."""
    for address, node in numa.items():
        dev = tmp_path / "sys/bus/pci/devices" / address
        dev.mkdir(parents=True)
        (dev / "numa_node").write_text(node + "\n")
        (dev / "vendor").write_text("0x10de\n")
    (tmp_path / "proc").mkdir(exist_ok=True)
    return HostPaths(procfs=tmp_path / "proc", sysfs=tmp_path / "sys", rootfs=tmp_path)


def test_two_gpus_with_numa_nodes(tmp_path: Path) -> None:
    nvml_sim.install(description(H200, h100(1, "9A")))
    paths = _host(tmp_path, {"0000:18:00.0": "0", "0000:9a:00.0": "1"})
    gpus, status = inspect_gpus(paths, Nvml())
    assert status.available and status.count == 2 and status.errors == []
    assert (status.driver_version, status.nvml_version, status.cuda_driver_version) == (
        "570.124.06", "12.570.124.06", "12.8")
    g0, g1 = gpus
    assert (g0.index, g0.name, g0.uuid) == (0, "NVIDIA H200", H200["uuid"])
    assert g0.pci_bus_id == "0000:18:00.0" and g0.numa_node == 0
    assert g1.pci_bus_id == "0000:9a:00.0" and g1.numa_node == 1
    assert g0.memory_total_bytes == H200["memory_total_bytes"]
    assert g0.memory_used_bytes == H200["memory_used_bytes"]
    assert g0.memory_free_bytes == H200["memory_total_bytes"] - H200["memory_used_bytes"]
    assert (g0.clocks.sm_mhz, g0.clocks.mem_mhz) == (345, 3201)
    assert (g0.max_clocks.sm_mhz, g0.max_clocks.mem_mhz) == (1980, 3201)
    assert g0.supported_memory_clocks_mhz == [3201]
    assert g0.supported_graphics_clocks_mhz == {"3201": H200_GRAPHICS}
    assert g0.power.model_dump() == {"limit_mw": 700000, "default_limit_mw": 700000, "min_limit_mw": 200000,
                                     "max_limit_mw": 700000, "usage_mw": 115000}
    assert g0.persistence_mode is False and g1.persistence_mode is True
    assert g0.compute_mode == "default" and g0.cuda_compute_capability == "9.0"
    assert g1.clocks.sm_mhz == 1755


def test_unknown_numa_node_is_none(tmp_path: Path) -> None:
    nvml_sim.install(description(H200, h100(1, "9A")))
    paths = _host(tmp_path, {"0000:18:00.0": "-1"})  # and no dir at all for the second GPU
    gpus, _ = inspect_gpus(paths, Nvml())
    assert [g.numa_node for g in gpus] == [None, None]


def test_malformed_numa_node_is_input_error(tmp_path: Path) -> None:
    nvml_sim.install(description(H200))
    paths = _host(tmp_path, {"0000:18:00.0": "zero"})
    with pytest.raises(InputError) as err:
        inspect_gpus(paths, Nvml())
    assert err.value.path and err.value.path.endswith("0000:18:00.0/numa_node")


def test_not_supported_values_are_none(tmp_path: Path) -> None:
    gpu = dict(H200, not_supported=["nvmlDeviceGetPowerUsage", "nvmlDeviceGetSupportedMemoryClocks",
                                    "nvmlDeviceGetPowerManagementLimitConstraints", "nvmlDeviceGetPersistenceMode"])
    nvml_sim.install(description(gpu))
    (g,), status = inspect_gpus(_host(tmp_path, {}), Nvml())
    assert status.available
    assert g.power.usage_mw is None and g.power.min_limit_mw is None and g.power.max_limit_mw is None
    assert g.power.limit_mw == 700000
    assert g.supported_memory_clocks_mhz is None and g.supported_graphics_clocks_mhz is None
    assert g.persistence_mode is None


def test_lost_gpu_is_reported_and_others_kept(tmp_path: Path) -> None:
    nvml_sim.install(description(dict(H200, lost=True), h100(1, "9A")))
    gpus, status = inspect_gpus(_host(tmp_path, {}), Nvml())
    assert [g.index for g in gpus] == [1]
    assert status.count == 2
    assert len(status.errors) == 1 and status.errors[0].startswith("gpu 0:") and "error 15" in status.errors[0]


def test_no_library_means_empty_list_and_reason(tmp_path: Path) -> None:
    nvml_sim.install({"library": "missing"})
    gpus, status = inspect_gpus(_host(tmp_path, {}), Nvml())
    assert gpus == [] and status.available is False and status.count == 0
    assert "library not found" in (status.reason or "").lower()


def test_server_fixture_has_8_gpus_matching_its_description(tmp_path: Path) -> None:
    raw = json.loads(SERVER_8GPU.read_text())
    numa = {"0000:18:00.0": "0", "0000:2a:00.0": "0", "0000:3a:00.0": "0", "0000:5d:00.0": "0",
            "0000:9a:00.0": "1", "0000:ab:00.0": "1", "0000:ba:00.0": "1", "0000:db:00.0": "1"}
    gpus, status = inspect_gpus(_host(tmp_path, numa), open_nvml(SERVER_8GPU))
    assert status.count == 8 and len(gpus) == 8
    assert [g.pci_bus_id for g in gpus] == list(numa)
    assert [g.numa_node for g in gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [g.uuid for g in gpus] == [g["uuid"] for g in raw["gpus"]]
    assert all(len(g.supported_graphics_clocks_mhz["2619"]) == 110 for g in gpus if g.supported_graphics_clocks_mhz)


def test_server_fixture_sysfs_side_when_present() -> None:
    """When H1's fixture tree has the PCI side, every GPU there gets its node (0 for the first four, 1 after)."""
    root = SERVER_8GPU.parent
    if not (root / "sys/bus/pci/devices/0000:18:00.0/numa_node").exists():
        pytest.skip("server-2s-8gpu fixture tree has no PCI sysfs side yet")
    paths = HostPaths(procfs=root / "proc", sysfs=root / "sys", rootfs=root)
    gpus, _ = inspect_gpus(paths, open_nvml(SERVER_8GPU))
    assert [g.numa_node for g in gpus] == [0, 0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("nvml_id, sysfs_id", [("00000000:18:00.0", "0000:18:00.0"),
                                                ("00000000:DB:00.0", "0000:db:00.0"),
                                                ("0001:0A:1F.7", "0001:0a:1f.7")])
def test_sysfs_pci_address(nvml_id: str, sysfs_id: str) -> None:
    assert sysfs_pci_address(nvml_id) == sysfs_id


def test_malformed_bus_id_is_host_error() -> None:
    with pytest.raises(HostError):
        sysfs_pci_address("garbage")
