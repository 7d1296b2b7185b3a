"""The simulated library's getters: memory, utilization, temperature, clock events, clocks, power, modes."""

from __future__ import annotations

from typing import Any

import pynvml

from agent.gpu.simulator.core import SimulatorCore
from agent.gpu.simulator.description import (
    ARGUMENT_VERSION_MISMATCH,
    CLOCK_KEYS,
    INSUFFICIENT_SIZE,
    INVALID_ARGUMENT,
    NOT_FOUND,
    NOT_SUPPORTED,
    SUCCESS,
    SimGpu,
    deref,
    scalar,
)


class SimulatorReads(SimulatorCore):
    # --- memory, utilization, temperature, events ---

    def _memory(self, gpu: SimGpu) -> tuple[int, int, int]:
        total = int(gpu.desc.get("memory_total_bytes", 0))
        used = int(gpu.desc.get("memory_used_bytes", 0))
        reserved = int(gpu.desc.get("memory_reserved_bytes", 0))
        return total, used, reserved

    def _c_nvmlDeviceGetMemoryInfo(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetMemoryInfo", handle)
        if rc or gpu is None:
            return rc
        total, used, reserved = self._memory(gpu)
        mem = deref(out)
        mem.total, mem.used, mem.free = total, used + reserved, total - used - reserved
        return SUCCESS

    def _c_nvmlDeviceGetMemoryInfo_v2(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetMemoryInfo_v2", handle)
        if rc or gpu is None:
            return rc
        mem = deref(out)
        if mem.version != pynvml.nvmlMemory_v2:
            return ARGUMENT_VERSION_MISMATCH
        total, used, reserved = self._memory(gpu)
        mem.total, mem.reserved, mem.used, mem.free = total, reserved, used, total - used - reserved
        return SUCCESS

    def _c_nvmlDeviceGetUtilizationRates(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetUtilizationRates", handle)
        if rc == SUCCESS and gpu:
            util = gpu.desc.get("utilization", {})
            deref(out).gpu, deref(out).memory = int(util.get("gpu", 0)), int(util.get("memory", 0))
        return rc

    def _c_nvmlDeviceGetTemperature(self, handle: Any, sensor: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetTemperature", handle)
        if rc or gpu is None:
            return rc
        if int(scalar(sensor)) != pynvml.NVML_TEMPERATURE_GPU:
            return INVALID_ARGUMENT
        deref(out).value = int(gpu.desc.get("temperature_c", 35))
        return SUCCESS

    def _c_nvmlDeviceGetTemperatureV(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetTemperatureV", handle)
        if rc or gpu is None:
            return rc
        temp = deref(out)
        if temp.version != pynvml.nvmlTemperature_v1:
            return ARGUMENT_VERSION_MISMATCH
        if temp.sensorType != pynvml.NVML_TEMPERATURE_GPU:
            return INVALID_ARGUMENT
        temp.temperature = int(gpu.desc.get("temperature_c", 35))
        return SUCCESS

    def _event_reasons(self, name: str, handle: Any, out: Any) -> int:
        rc, gpu = self._pre(name, handle)
        if rc == SUCCESS and gpu:
            deref(out).value = int(gpu.desc.get("clocks_event_reasons", pynvml.nvmlClocksEventReasonGpuIdle))
        return rc

    def _c_nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any, out: Any) -> int:
        return self._event_reasons("nvmlDeviceGetCurrentClocksEventReasons", handle, out)

    def _c_nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any, out: Any) -> int:
        return self._event_reasons("nvmlDeviceGetCurrentClocksThrottleReasons", handle, out)

    # --- clocks ---

    def _current_clock(self, gpu: SimGpu, key: str) -> int | None:
        """The described clock, pulled into the locked range when one is set (as the driver would run it)."""
        value = gpu.clock("clocks", key)
        if value is None:
            return None
        state = self.state_of(gpu.index)
        lock = state["memory_locked_clocks"] if key == "mem_mhz" else (
            state["gpu_locked_clocks"] if key in ("sm_mhz", "graphics_mhz") else None)
        if lock:
            value = min(max(value, lock[0]), lock[1])
        return value

    def _clock_out(self, name: str, handle: Any, ctype: Any, out: Any, group: str) -> int:
        rc, gpu = self._pre(name, handle)
        if rc or gpu is None:
            return rc
        key = CLOCK_KEYS.get(int(scalar(ctype)))
        if key is None:
            return INVALID_ARGUMENT
        value = self._current_clock(gpu, key) if group == "clocks" else gpu.clock(group, key)
        if value is None:
            return NOT_SUPPORTED
        deref(out).value = value
        return SUCCESS

    def _c_nvmlDeviceGetClockInfo(self, handle: Any, ctype: Any, out: Any) -> int:
        return self._clock_out("nvmlDeviceGetClockInfo", handle, ctype, out, "clocks")

    def _c_nvmlDeviceGetMaxClockInfo(self, handle: Any, ctype: Any, out: Any) -> int:
        return self._clock_out("nvmlDeviceGetMaxClockInfo", handle, ctype, out, "max_clocks")

    def _c_nvmlDeviceGetClock(self, handle: Any, ctype: Any, clock_id: Any, out: Any) -> int:
        group = {pynvml.NVML_CLOCK_ID_CURRENT: "clocks", pynvml.NVML_CLOCK_ID_CUSTOMER_BOOST_MAX: "max_clocks",
                 pynvml.NVML_CLOCK_ID_APP_CLOCK_DEFAULT: "base_clocks",
                 pynvml.NVML_CLOCK_ID_APP_CLOCK_TARGET: "base_clocks"}.get(int(scalar(clock_id)))
        if group is None:
            rc, _ = self._pre("nvmlDeviceGetClock", handle)
            return rc or INVALID_ARGUMENT
        return self._clock_out("nvmlDeviceGetClock", handle, ctype, out, group)

    @staticmethod
    def _fill_array(count: Any, array: Any, values: list[int]) -> int:
        counter = deref(count)
        if not values:
            counter.value = 0
            return SUCCESS
        if array is None or counter.value < len(values):
            counter.value = len(values)
            return INSUFFICIENT_SIZE
        for i, v in enumerate(values):
            array[i] = v
        counter.value = len(values)
        return SUCCESS

    def _c_nvmlDeviceGetSupportedMemoryClocks(self, handle: Any, count: Any, array: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetSupportedMemoryClocks", handle)
        return rc if rc or gpu is None else self._fill_array(count, array, gpu.memory_clocks)

    def _c_nvmlDeviceGetSupportedGraphicsClocks(self, handle: Any, mem_mhz: Any, count: Any, array: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetSupportedGraphicsClocks", handle)
        if rc or gpu is None:
            return rc
        clocks = gpu.graphics_clocks.get(int(scalar(mem_mhz)))
        return NOT_FOUND if clocks is None else self._fill_array(count, array, clocks)

    # --- power and modes ---

    def _power_out(self, name: str, handle: Any, out: Any, key: str) -> int:
        rc, gpu = self._pre(name, handle)
        if rc or gpu is None:
            return rc
        value = self.state_of(gpu.index)["power_limit_mw"] if key == "limit_mw" else gpu.power[key]
        if key == "usage_mw" and value is not None:
            value = min(int(value), int(self.state_of(gpu.index)["power_limit_mw"] or value))
        if value is None:
            return NOT_SUPPORTED
        deref(out).value = int(value)
        return SUCCESS

    def _c_nvmlDeviceGetPowerManagementLimit(self, handle: Any, out: Any) -> int:
        return self._power_out("nvmlDeviceGetPowerManagementLimit", handle, out, "limit_mw")

    def _c_nvmlDeviceGetEnforcedPowerLimit(self, handle: Any, out: Any) -> int:
        return self._power_out("nvmlDeviceGetEnforcedPowerLimit", handle, out, "limit_mw")

    def _c_nvmlDeviceGetPowerManagementDefaultLimit(self, handle: Any, out: Any) -> int:
        return self._power_out("nvmlDeviceGetPowerManagementDefaultLimit", handle, out, "default_limit_mw")

    def _c_nvmlDeviceGetPowerUsage(self, handle: Any, out: Any) -> int:
        return self._power_out("nvmlDeviceGetPowerUsage", handle, out, "usage_mw")

    def _c_nvmlDeviceGetPowerManagementLimitConstraints(self, handle: Any, lo: Any, hi: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetPowerManagementLimitConstraints", handle)
        if rc or gpu is None:
            return rc
        if gpu.power["min_limit_mw"] is None or gpu.power["max_limit_mw"] is None:
            return NOT_SUPPORTED
        deref(lo).value, deref(hi).value = int(gpu.power["min_limit_mw"]), int(gpu.power["max_limit_mw"])
        return SUCCESS

    def _c_nvmlDeviceGetPersistenceMode(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetPersistenceMode", handle)
        if rc == SUCCESS and gpu:
            deref(out).value = int(self.state_of(gpu.index)["persistence_mode"])
        return rc

    def _c_nvmlDeviceGetComputeMode(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetComputeMode", handle)
        if rc == SUCCESS and gpu:
            deref(out).value = int(self.state_of(gpu.index)["compute_mode"])
        return rc
