"""The NVML funnel and the C-level simulator, exercised through NVIDIA's real pynvml binding.

Expected values come from the GPU descriptions in tests/support/gpu_sim.py, never from the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pynvml
import pytest

from agent.errors import HostError, InputError, NotApplicable
from agent.gpu.nvml import DryRunViolation, Nvml, NvmlError, forbid_mutations, is_mutating, open_nvml
from agent.gpu.simulator import library as nvml_sim
from tests.support.gpu_sim import H200, H200_GRAPHICS, SERVER_8GPU, description, h100


@pytest.fixture(autouse=True)
def _no_sim_left_behind() -> Iterator[None]:
    yield
    nvml_sim.uninstall()


def _sim(*gpus: dict, **top: object) -> nvml_sim.NvmlSimulator:
    return nvml_sim.install(description(*gpus, **top))


# --- the real binding against the simulator -------------------------------------------------------------


def test_binding_reads_what_the_description_says() -> None:
    _sim(H200, h100(1, "2A"))
    pynvml.nvmlInit()
    try:
        assert pynvml.nvmlDeviceGetCount() == 2
        assert pynvml.nvmlSystemGetDriverVersion() == "570.124.06"
        assert pynvml.nvmlSystemGetNVMLVersion() == "12.570.124.06"
        assert pynvml.nvmlSystemGetCudaDriverVersion() == 12080
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        assert pynvml.nvmlDeviceGetName(h) == "NVIDIA H200"
        assert pynvml.nvmlDeviceGetUUID(h) == H200["uuid"]
        assert pynvml.nvmlDeviceGetIndex(h) == 0
        pci = pynvml.nvmlDeviceGetPciInfo(h)
        assert pci.busId == "00000000:18:00.0" and pci.bus == 0x18
        assert pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) == 345
        assert pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM) == 3201
        assert pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM) == 1980
        assert pynvml.nvmlDeviceGetSupportedMemoryClocks(h) == [3201]
        assert pynvml.nvmlDeviceGetSupportedGraphicsClocks(h, 3201) == H200_GRAPHICS
        assert pynvml.nvmlDeviceGetPowerManagementLimitConstraints(h) == [200000, 700000]
        assert pynvml.nvmlDeviceGetPowerManagementDefaultLimit(h) == 700000
        assert pynvml.nvmlDeviceGetPowerManagementLimit(h) == 700000
        assert pynvml.nvmlDeviceGetPowerUsage(h) == 115000
        assert pynvml.nvmlDeviceGetPersistenceMode(h) == pynvml.NVML_FEATURE_DISABLED
        assert pynvml.nvmlDeviceGetCudaComputeCapability(h) == (9, 0)
        assert pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == 33
        assert pynvml.nvmlDeviceGetTemperatureV(h, pynvml.NVML_TEMPERATURE_GPU) == 33
        util = pynvml.nvmlDeviceGetUtilizationRates(h)
        assert (util.gpu, util.memory) == (87, 41)
        assert pynvml.nvmlDeviceGetCurrentClocksEventReasons(h) == pynvml.nvmlClocksEventReasonSwPowerCap
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        assert (mem.total, mem.used, mem.free) == (150754820096, 1073741824, 150754820096 - 1073741824)
        mem2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
        assert mem2.total == 150754820096
        # the second GPU, found three ways, is the same handle
        h1 = pynvml.nvmlDeviceGetHandleByIndex(1)
        assert pynvml.nvmlDeviceGetName(h1) == "NVIDIA H100 80GB HBM3"
        for other in (pynvml.nvmlDeviceGetHandleByUUID(h100(1, "2A")["uuid"]),
                      pynvml.nvmlDeviceGetHandleByPciBusId("0000:2a:00.0")):
            assert pynvml.nvmlDeviceGetIndex(other) == 1
        graphics = pynvml.nvmlDeviceGetSupportedGraphicsClocks(h1, 2619)
        assert (len(graphics), max(graphics), min(graphics)) == (110, 1980, 345)
    finally:
        pynvml.nvmlShutdown()


def test_binding_sees_real_error_codes() -> None:
    _sim(H200)
    pynvml.nvmlInit()
    try:
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            pynvml.nvmlDeviceGetHandleByIndex(5)
        with pytest.raises(pynvml.NVMLError_NotFound):
            pynvml.nvmlDeviceGetHandleByUUID("GPU-nope")
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        with pytest.raises(pynvml.NVMLError_NotFound):
            pynvml.nvmlDeviceGetSupportedGraphicsClocks(h, 1234)
        with pytest.raises(pynvml.NVMLError_FunctionNotFound):
            pynvml.nvmlDeviceGetBoardPartNumber(h)
    finally:
        pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()


def test_missing_library_fails_like_the_real_loader() -> None:
    nvml_sim.install({"library": "missing"})
    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        pynvml.nvmlInit()


def test_uninstall_restores_the_binding() -> None:
    original = (pynvml.CDLL, pynvml._nvmlGetFunctionPointer)
    _sim(H200)
    assert pynvml._nvmlGetFunctionPointer is not original[1]
    nvml_sim.uninstall()
    assert (pynvml.CDLL, pynvml._nvmlGetFunctionPointer) == original
    assert nvml_sim.installed() is None


# --- the funnel ------------------------------------------------------------------------------------------


def test_funnel_is_lazy_and_decodes() -> None:
    sim = _sim(H200)
    nvml = Nvml()
    assert sim.calls == []  # nothing happens until first use
    assert nvml.call(pynvml.nvmlSystemGetDriverVersion) == "570.124.06"
    assert sim.calls.count("nvmlInitWithFlags") == 1
    assert nvml.available and nvml.device_count() == 1
    assert sim.calls.count("nvmlInitWithFlags") == 1  # initialised once
    h = nvml.call("nvmlDeviceGetHandleByIndex", 0)  # by name works too
    assert nvml.call(pynvml.nvmlDeviceGetName, h) == "NVIDIA H200"
    nvml.close()
    assert sim.calls[-1] == "nvmlShutdown" and sim.init_count == 0


def test_not_supported_is_none_for_getters() -> None:
    gpu = dict(H200, not_supported=["nvmlDeviceGetPowerUsage", "nvmlDeviceGetSupportedMemoryClocks"])
    _sim(gpu)
    nvml = Nvml()
    h = nvml.call(pynvml.nvmlDeviceGetHandleByIndex, 0)
    assert nvml.call(pynvml.nvmlDeviceGetPowerUsage, h) is None
    assert nvml.call(pynvml.nvmlDeviceGetSupportedMemoryClocks, h) is None
    assert nvml.call(pynvml.nvmlDeviceGetBoardPartNumber, h) is None  # FUNCTION_NOT_FOUND: older driver
    assert nvml.call(pynvml.nvmlDeviceGetPowerManagementLimit, h) == 700000


def test_not_supported_setter_raises_instead_of_pretending() -> None:
    _sim(dict(H200, not_supported=["nvmlDeviceSetMemoryLockedClocks"]))
    nvml = Nvml()
    h = nvml.call(pynvml.nvmlDeviceGetHandleByIndex, 0)
    with pytest.raises(NvmlError) as err:
        nvml.call(pynvml.nvmlDeviceSetMemoryLockedClocks, h, 3201, 3201)
    assert err.value.code == pynvml.NVML_ERROR_NOT_SUPPORTED and err.value.not_supported


def test_missing_library_means_no_gpus(tmp_path: Path) -> None:
    nvml = open_nvml(_write(tmp_path / "nvml.json", {"library": "missing"}))
    assert nvml.available is False
    assert "library not found" in (nvml.reason or "").lower()
    assert nvml.device_count() == 0
    with pytest.raises(NotApplicable):
        nvml.call(pynvml.nvmlDeviceGetCount)


def test_driver_not_loaded_means_no_gpus() -> None:
    _sim(H200, driver="not_loaded")
    nvml = Nvml()
    assert not nvml.available and "driver not loaded" in (nvml.reason or "").lower()


@pytest.mark.parametrize("code, flag", [(pynvml.NVML_ERROR_GPU_IS_LOST, "gpu_lost"),
                                        (pynvml.NVML_ERROR_NO_PERMISSION, "no_permission"),
                                        (pynvml.NVML_ERROR_INVALID_ARGUMENT, None)])
def test_other_errors_are_host_errors_with_code(code: int, flag: str | None) -> None:
    _sim(dict(H200, errors={"nvmlDeviceGetClockInfo": code}))
    nvml = Nvml()
    h = nvml.call(pynvml.nvmlDeviceGetHandleByIndex, 0)
    with pytest.raises(HostError) as err:
        nvml.call(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM)
    assert isinstance(err.value, NvmlError)
    assert err.value.code == code and err.value.function == "nvmlDeviceGetClockInfo"
    assert f"error {code}" in str(err.value) and "nvmlDeviceGetClockInfo" in str(err.value)
    if flag:
        assert getattr(err.value, flag)


def test_lost_gpu_fails_every_device_call() -> None:
    _sim(dict(H200, lost=True))
    nvml = Nvml()
    h = nvml.call(pynvml.nvmlDeviceGetHandleByIndex, 0)
    with pytest.raises(NvmlError) as err:
        nvml.call(pynvml.nvmlDeviceGetName, h)
    assert err.value.gpu_lost


def test_init_failure_other_than_missing_is_an_error() -> None:
    _sim(H200, errors={"nvmlInitWithFlags": pynvml.NVML_ERROR_NO_PERMISSION})
    with pytest.raises(NvmlError) as err:
        _ = Nvml().available
    assert err.value.code == pynvml.NVML_ERROR_NO_PERMISSION and err.value.function == "nvmlInit"


def test_dry_run_blocks_setters_before_the_library() -> None:
    sim = _sim(H200)
    nvml = Nvml(dry_run=True)
    h = nvml.call(pynvml.nvmlDeviceGetHandleByIndex, 0)
    for fn, args in [(pynvml.nvmlDeviceSetGpuLockedClocks, (1980, 1980)),
                     (pynvml.nvmlDeviceResetGpuLockedClocks, ()),
                     (pynvml.nvmlDeviceSetMemoryLockedClocks, (3201, 3201)),
                     (pynvml.nvmlDeviceResetMemoryLockedClocks, ()),
                     (pynvml.nvmlDeviceSetPowerManagementLimit, (500000,)),
                     (pynvml.nvmlDeviceSetPersistenceMode, (1,)),
                     ("nvmlDeviceSetComputeMode", (0,))]:
        with pytest.raises(DryRunViolation):
            nvml.call(fn, h, *args)
    assert not [c for c in sim.calls if is_mutating(c)]
    assert sim.state_of(0)["power_limit_mw"] == 700000
    assert nvml.call(pynvml.nvmlDeviceGetPowerManagementLimit, h) == 700000  # reads still work


def test_mutating_names() -> None:
    assert is_mutating("nvmlDeviceSetGpuLockedClocks") and is_mutating("nvmlDeviceResetMemoryLockedClocks")
    assert is_mutating("nvmlDeviceSetSomethingNew")
    assert not is_mutating("nvmlDeviceGetClockInfo") and not is_mutating("nvmlDeviceGetPowerManagementLimit")


def test_forbid_mutations_guards_the_raw_binding() -> None:
    sim = _sim(H200)
    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        with forbid_mutations() as guard:
            with pytest.raises(DryRunViolation):
                pynvml.nvmlDeviceSetPowerManagementLimit(h, 300000)
            assert pynvml.nvmlDeviceGetPowerManagementLimit(h) == 700000
        assert guard.attempts == ["nvmlDeviceSetPowerManagementLimit"]
        assert "nvmlDeviceSetPowerManagementLimit" not in sim.calls
        pynvml.nvmlDeviceSetPowerManagementLimit(h, 300000)  # guard gone: reaches the library again
        assert pynvml.nvmlDeviceGetPowerManagementLimit(h) == 300000
    finally:
        pynvml.nvmlShutdown()


# --- setters validate like the library -------------------------------------------------------------------


def _handle(nvml: Nvml, index: int = 0) -> object:
    return nvml.call(pynvml.nvmlDeviceGetHandleByIndex, index)


def test_locked_clocks_change_what_the_gpu_reports() -> None:
    _sim(H200)
    nvml = Nvml()
    h = _handle(nvml)
    nvml.call(pynvml.nvmlDeviceSetGpuLockedClocks, h, 1980, 1980)
    assert nvml.call(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM) == 1980
    nvml.call(pynvml.nvmlDeviceResetGpuLockedClocks, h)
    assert nvml.call(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM) == 345
    nvml.call(pynvml.nvmlDeviceSetGpuLockedClocks, h, pynvml.NVML_CLOCK_LIMIT_ID_TDP,
              pynvml.NVML_CLOCK_LIMIT_ID_TDP)
    assert nvml.call(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM) == 1590


@pytest.mark.parametrize("fn, args", [
    (pynvml.nvmlDeviceSetGpuLockedClocks, (1500, 1200)),     # min > max
    (pynvml.nvmlDeviceSetGpuLockedClocks, (300, 1980)),      # below the lowest supported clock
    (pynvml.nvmlDeviceSetGpuLockedClocks, (1980, 2100)),     # above max
    (pynvml.nvmlDeviceSetMemoryLockedClocks, (3201, 3400)),
    (pynvml.nvmlDeviceSetPowerManagementLimit, (150000,)),   # below the 200 W floor
    (pynvml.nvmlDeviceSetPowerManagementLimit, (750000,)),   # above 700 W
    (pynvml.nvmlDeviceSetPersistenceMode, (2,)),
])
def test_setters_reject_values_outside_constraints(fn: object, args: tuple) -> None:
    sim = _sim(H200)
    nvml = Nvml()
    before = sim.state_of(0)
    with pytest.raises(NvmlError) as err:
        nvml.call(fn, _handle(nvml), *args)  # type: ignore[arg-type]
    assert err.value.code == pynvml.NVML_ERROR_INVALID_ARGUMENT
    assert sim.state_of(0) == before


def test_setters_need_root() -> None:
    sim = _sim(H200, root=False)
    nvml = Nvml()
    with pytest.raises(NvmlError) as err:
        nvml.call(pynvml.nvmlDeviceSetPowerManagementLimit, _handle(nvml), 500000)
    assert err.value.no_permission
    assert sim.state_of(0)["power_limit_mw"] == 700000
    assert nvml.call(pynvml.nvmlDeviceGetPowerManagementLimit, _handle(nvml)) == 700000


def test_power_v2_setter_failure_is_swallowed_by_the_binding() -> None:
    """The reason the tuner uses the v1 setter and reads back: the v2 wrapper reports success on failure."""
    sim = _sim(H200)
    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        ret = pynvml.nvmlDeviceSetPowerManagementLimit_v2(h, 0, 100000)  # 100 W: invalid
        assert ret == pynvml.NVML_SUCCESS
        assert pynvml.nvmlDeviceGetPowerManagementLimit(h) == 700000
        assert "nvmlDeviceSetPowerManagementLimit_v2" in sim.calls
    finally:
        pynvml.nvmlShutdown()


@pytest.mark.process
def test_state_file_is_shared_across_processes(tmp_path: Path) -> None:
    desc_path = _write(tmp_path / "nvml.json", description(H200))
    state = tmp_path / "state.json"
    child = (
        "import sys, pynvml\n"
        "from agent.gpu.nvml import open_nvml\n"
        "n = open_nvml(sys.argv[1])\n"
        "h = n.call(pynvml.nvmlDeviceGetHandleByIndex, 0)\n"
        "n.call(pynvml.nvmlDeviceSetGpuLockedClocks, h, 1200, 1800)\n"
        "n.call(pynvml.nvmlDeviceSetPowerManagementLimit, h, 450000)\n"
        "n.call(pynvml.nvmlDeviceSetPersistenceMode, h, 1)\n"
    )
    env = {"HOSTTUNE_NVML_SIM_STATE": str(state), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", child, str(desc_path)], check=True, env=env, timeout=60)
    saved = json.loads(state.read_text())["gpus"][H200["uuid"]]
    assert saved["gpu_locked_clocks"] == [1200, 1800] and saved["power_limit_mw"] == 450000

    sim = nvml_sim.install(desc_path, state_file=state)  # a second process's view
    nvml = Nvml()
    h = _handle(nvml)
    assert nvml.call(pynvml.nvmlDeviceGetPowerManagementLimit, h) == 450000
    assert nvml.call(pynvml.nvmlDeviceGetPersistenceMode, h) == 1
    assert nvml.call(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM) == 1200  # idle 345 pulled up
    nvml.call(pynvml.nvmlDeviceResetGpuLockedClocks, h)
    assert json.loads(state.read_text())["gpus"][H200["uuid"]]["gpu_locked_clocks"] is None
    assert sim.state_of(0)["gpu_locked_clocks"] is None


def test_call_log_records_every_c_call(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    nvml_sim.install(description(H200), call_log=log)
    nvml = Nvml()
    nvml.call(pynvml.nvmlDeviceGetName, _handle(nvml))
    assert log.read_text().split() == ["nvmlInitWithFlags", "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetName"]


def test_fixture_server_description_loads() -> None:
    sim = nvml_sim.install(SERVER_8GPU)
    nvml = Nvml()
    assert nvml.device_count() == 8
    raw = json.loads(SERVER_8GPU.read_text())
    for i, gpu in enumerate(raw["gpus"]):
        h = _handle(nvml, i)
        assert nvml.call(pynvml.nvmlDeviceGetUUID, h) == gpu["uuid"]
        assert nvml.call(pynvml.nvmlDeviceGetPciInfo, h).busId == gpu["pci_bus_id"]
    assert sim.source == SERVER_8GPU


def test_bad_description_is_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "nvml.json"
    bad.write_text('{\n  "gpus": [\n    {"name": "x",}\n  ]\n}\n')
    with pytest.raises(InputError) as err:
        open_nvml(bad)
    assert err.value.path == str(bad) and err.value.line == 3
    _write(bad, {"gpus": [{"name": "NVIDIA H200"}]})
    with pytest.raises(InputError) as err:
        open_nvml(bad)
    assert err.value.field == "gpus[0].uuid" and err.value.path == str(bad)
    with pytest.raises(InputError):
        open_nvml(tmp_path / "absent.json")


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path
