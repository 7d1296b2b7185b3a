"""GPU series in dcgm-exporter's names and labels, Xid and ECC health and one 0/1 series per clock event reason,
read through the NVML funnel from the C-level simulator under the real pynvml binding."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pynvml
import pytest

from agent.gpu import nvml
from agent.gpu.device import CLOCK_EVENT_LABELS, Device
from agent.gpu.simulator import library as nvml_sim
from agent.gpu.xid import XidWatch
from agent.metrics.prom import MetricFamily, format_families, parse_text, sample_value
from agent.telemetry.collector import build_telemetry
from agent.telemetry.gpu import GpuSampler
from tests.support.gpu_sim import H200, description, h100

ECC_ON = {"enabled": True, "sbe_volatile": 3, "dbe_volatile": 1, "sbe_aggregate": 40}


@pytest.fixture(autouse=True)
def _fresh_nvml() -> Iterator[None]:
    yield
    nvml_sim.uninstall()


def scrape(sampler: GpuSampler) -> dict[str, MetricFamily]:
    """One sample's GPU series as a scraper sees them: formatted, then parsed back."""
    return parse_text(format_families(GpuSampler.families(sampler.sample())))


def test_dcgm_labels_ecc_and_clock_events() -> None:
    h200 = dict(H200, ecc=ECC_ON, minor_number=3,
                clocks_event_reasons=pynvml.nvmlClocksEventReasonSwPowerCap
                | pynvml.nvmlClocksEventReasonHwThermalSlowdown)
    ecc_off = dict(h100(1, "9A"), ecc={"enabled": False})
    nvml_sim.install(description(h200, ecc_off))
    fams = scrape(GpuSampler(nvml.open_nvml()))
    labels0 = {"gpu": "0", "UUID": H200["uuid"], "device": "nvidia3", "modelName": "NVIDIA H200",
               "Hostname": socket.gethostname(), "pci_bus_id": "00000000:18:00.0"}
    (sm0,) = [s for s in fams["DCGM_FI_DEV_SM_CLOCK"].samples if s.labels["gpu"] == "0"]
    assert sm0.labels == labels0 and sm0.value == 345
    assert sample_value(fams, "DCGM_FI_DEV_FB_USED", {"gpu": "0"}) == H200["memory_used_bytes"] / (1 << 20)
    # dcgm-exporter's name has no _total: prometheus_client writes such a counter untyped (docs/telemetry.md)
    assert fams["DCGM_FI_DEV_ECC_SBE_VOL_TOTAL"].type in ("untyped", "unknown")
    assert sample_value(fams, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", labels0) == 3
    assert sample_value(fams, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", labels0) == 1
    # ECC off on the H100: no ECC series for it at all (never a 0 that would claim clean memory)
    assert sample_value(fams, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", {"gpu": "1"}) is None
    assert sample_value(fams, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", {"gpu": "1"}) is None
    assert sample_value(fams, "DCGM_FI_DEV_SM_CLOCK", {"gpu": "1", "device": "nvidia1"}) == 1755
    active = {s.labels["reason"]: s.value for s in fams["hosttune_gpu_clock_event_active"].samples
              if s.labels["gpu"] == "0"}
    assert set(active) == set(CLOCK_EVENT_LABELS.values())
    assert {r for r, v in active.items() if v == 1} == {"sw_power_cap", "hw_thermal"}
    assert sample_value(fams, "hosttune_gpu_clock_event_active", {"gpu": "1", "reason": "gpu_idle"}) == 1  # idle
    assert sample_value(fams, "hosttune_gpu_clock_event_active", {"gpu": "1", "reason": "hw_thermal"}) == 0


def test_xid_is_0_until_one_arrives_then_the_last_one() -> None:
    sim = nvml_sim.install(description(dict(H200, xid_events=[13]), h100(1, "9A")))
    sampler = GpuSampler(nvml.open_nvml())
    first = scrape(sampler)
    # registered at the first sample: the queued Xid is taken at the next one
    assert sample_value(first, "DCGM_FI_DEV_XID_ERRORS", {"gpu": "0"}) == 0
    assert sample_value(first, "DCGM_FI_DEV_XID_ERRORS", {"gpu": "1"}) == 0
    second = scrape(sampler)
    assert sample_value(second, "DCGM_FI_DEV_XID_ERRORS", {"gpu": "0", "UUID": H200["uuid"]}) == 13
    sim.xid(1, 79)
    sim.xid(1, 48)
    third = scrape(sampler)
    assert sample_value(third, "DCGM_FI_DEV_XID_ERRORS", {"gpu": "1"}) == 48
    assert sample_value(third, "DCGM_FI_DEV_XID_ERRORS", {"gpu": "0"}) == 13
    assert not [c for c in sim.calls if nvml.is_mutating(c)]
    assert "nvmlEventSetWait_v2" in sim.calls


def test_no_xid_series_where_the_driver_delivers_no_xid_events() -> None:
    quiet = dict(H200, not_supported=["nvmlDeviceGetSupportedEventTypes"])
    no_xid = dict(h100(1, "9A"), supported_event_types=pynvml.nvmlEventTypePState)
    nvml_sim.install(description(quiet, no_xid))
    sampler = GpuSampler(nvml.open_nvml())
    for _ in range(2):
        fams = scrape(sampler)
        assert "DCGM_FI_DEV_XID_ERRORS" not in fams
        assert sample_value(fams, "DCGM_FI_DEV_GPU_TEMP", {"gpu": "1"}) is not None


def test_xid_watch_never_waits_and_frees_its_event_set() -> None:
    sim = nvml_sim.install(description(H200))
    session = nvml.open_nvml()
    watch = XidWatch(session)
    watch.drain()  # nothing registered yet: no event set, no call
    assert "nvmlEventSetCreate" not in sim.calls
    watch.watch(Device.open(session, 0), H200["uuid"])
    watch.drain()
    assert watch.last(H200["uuid"]) == 0 and watch.last("GPU-other") is None
    watch.close()
    assert "nvmlEventSetFree" in sim.calls and watch.last(H200["uuid"]) is None


def test_an_xid_of_a_gpu_whose_uuid_cannot_be_read_is_skipped() -> None:
    sim = nvml_sim.install(description(H200, h100(1, "9A")))
    session = nvml.open_nvml()
    watch = XidWatch(session)
    other = h100(1, "9A")["uuid"]
    watch.watch(Device.open(session, 0), H200["uuid"])
    watch.watch(Device.open(session, 1), other)
    sim.xid(0, 79)
    sim.xid(1, 48)
    sim.gpus[0].errors["nvmlDeviceGetUUID"] = pynvml.NVML_ERROR_GPU_IS_LOST
    watch.drain()   # no NvmlError out of drain: the GPU sample goes on
    assert watch.last(H200["uuid"]) == 0 and watch.last(other) == 48


def test_a_gpu_less_host_has_no_gpu_series_and_no_error() -> None:
    nvml_sim.install({"library": "missing"})
    tel = build_telemetry(gpu=nvml.open_nvml())
    sample = tel.sample_once()
    assert sample.gpus == [] and "gpu" not in sample.errors
    fams = parse_text(tel.exposition())
    assert not [n for n in fams if n.startswith(("DCGM_", "hosttune_gpu_"))]
    assert sample_value(fams, "hosttune_telemetry_sampler_success", {"sampler": "gpu"}) == 1
