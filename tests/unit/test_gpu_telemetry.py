"""GPU telemetry sampling through the NVML funnel, on the C-level simulator under the real pynvml binding."""

from __future__ import annotations

from collections.abc import Iterator

import pynvml
import pytest

from agent.gpu import nvml
from agent.gpu.device import reason_names
from agent.gpu.simulator import library as nvml_sim
from agent.telemetry.gpu import GpuSampler, sample_gpus
from tests.support.gpu_sim import H200, description, h100


@pytest.fixture(autouse=True)
def _fresh_nvml() -> Iterator[None]:
    yield
    nvml_sim.uninstall()


def test_readings_match_the_described_gpus() -> None:
    sim = nvml_sim.install(description(H200, h100(1, "9A")))
    r0, r1 = sample_gpus(nvml.open_nvml())
    assert (r0.index, r0.uuid, r0.name) == (0, H200["uuid"], "NVIDIA H200")
    assert (r0.util_pct, r0.mem_util_pct) == (87, 41)
    assert r0.mem_used_bytes == H200["memory_used_bytes"]
    assert r0.mem_free_bytes == H200["memory_total_bytes"] - H200["memory_used_bytes"]
    assert (r0.sm_clock_mhz, r0.mem_clock_mhz) == (345, 3201)
    assert (r0.power_w, r0.power_limit_w, r0.temp_c) == (115.0, 700.0, 33)
    assert r0.throttle_reasons == pynvml.nvmlClocksEventReasonSwPowerCap
    assert reason_names(r0.throttle_reasons) == ["sw_power_cap"]
    assert r1.sm_clock_mhz == 1755 and r1.name == "NVIDIA H100 80GB HBM3"
    assert not [c for c in sim.calls if nvml.is_mutating(c)]


def test_not_supported_values_are_none_and_lost_gpu_left_out() -> None:
    quiet = dict(H200, not_supported=["nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature"])
    nvml_sim.install(description(quiet, dict(h100(1, "9A"), lost=True)))
    (r0,) = sample_gpus(nvml.open_nvml())
    assert r0.power_w is None and r0.temp_c is None and r0.sm_clock_mhz == 345


def test_no_nvml_no_readings() -> None:
    nvml_sim.install({"library": "missing"})
    assert sample_gpus(nvml.open_nvml()) == []


def test_reason_names() -> None:
    mask = pynvml.nvmlClocksEventReasonGpuIdle | pynvml.nvmlClocksEventReasonHwThermalSlowdown | 0x10000
    assert reason_names(mask) == ["gpu_idle", "hw_thermal_slowdown", "0x10000"]
    assert reason_names(0) == [] and reason_names(None) == []


def test_prometheus_families_from_the_sampler() -> None:
    nvml_sim.install(description(H200))
    families = {f.name: f for f in GpuSampler.families(GpuSampler(nvml.open_nvml()).sample())}
    assert families["DCGM_FI_DEV_SM_CLOCK"].samples[0].value == 345
    assert families["DCGM_FI_DEV_POWER_USAGE"].samples[0].value == pytest.approx(115.0)
    assert families["DCGM_FI_DEV_FB_USED"].samples[0].value == pytest.approx(H200["memory_used_bytes"] / 2**20)
    assert families["DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"].samples[0].value == pynvml.nvmlClocksEventReasonSwPowerCap
    labels = families["DCGM_FI_DEV_GPU_TEMP"].samples[0].labels
    assert labels["UUID"] == H200["uuid"] and labels["gpu"] == "0"
