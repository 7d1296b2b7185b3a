"""A stand-in for libnvidia-ml at the C-function level, under the real pynvml binding.

Why this shape: the code under test (agent.nvml, the inspector, the GPU tuner) and NVIDIA's own Python binding
must run unchanged, so the fake sits where the shared library would. install() makes pynvml's library "load"
(its CDLL is swapped for one that returns this simulator) and replaces pynvml._nvmlGetFunctionPointer with a
lookup into a table of Python callables. Each callable takes exactly the ctypes arguments the binding passes
(device handles, c_uint values, byref() out-pointers, char buffers, arrays), fills them the way the C library
does, and returns a real nvmlReturn_t code. The binding's own code then turns codes into NVMLError_* classes.

The GPUs are described by a JSON file (see docs/gpu.md; tests/fixtures/hosts/*/nvml.json):
  {"library": "missing"}                        -> loading fails like a host without the driver
  {"driver_version", "nvml_version", "cuda_driver_version", "root": true, "errors": {fn: code},
   "gpus": [{"name", "uuid", "pci_bus_id", "memory_total_bytes", "memory_used_bytes", "clocks", "max_clocks",
             "base_clocks", "supported_memory_clocks_mhz", "supported_graphics_clocks_mhz", "power",
             "persistence_mode", "compute_mode", "not_supported": [fn], "errors": {fn: code}, "lost": false, ...}]}
supported_graphics_clocks_mhz maps a memory clock to a list of MHz or to {"from": lo, "to": hi, "step": s}.

Setters validate like the library (INVALID_ARGUMENT outside the GPU's constraints, NO_PERMISSION when
"root": false) and change the simulated state. With a state file (env HOSTTUNE_NVML_SIM_STATE, else the
description's "state_file") that state lives on disk under a lock, so a second process sees what a first one
set: that is what crash tests need. Every C call is recorded in `calls` and, with env HOSTTUNE_NVML_SIM_LOG
(or "call_log"), appended to that file one name per line, so tests can prove what reached the "library".
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml

from agent.errors import InputError
from agent.fsio import read_text_capped

ENV_STATE = "HOSTTUNE_NVML_SIM_STATE"
ENV_LOG = "HOSTTUNE_NVML_SIM_LOG"

SUCCESS = pynvml.NVML_SUCCESS
UNINITIALIZED = pynvml.NVML_ERROR_UNINITIALIZED
INVALID_ARGUMENT = pynvml.NVML_ERROR_INVALID_ARGUMENT
NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION
NOT_FOUND = pynvml.NVML_ERROR_NOT_FOUND
INSUFFICIENT_SIZE = pynvml.NVML_ERROR_INSUFFICIENT_SIZE
DRIVER_NOT_LOADED = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
FUNCTION_NOT_FOUND = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
ARGUMENT_VERSION_MISMATCH = pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH

CLOCK_LIMIT_TDP = pynvml.NVML_CLOCK_LIMIT_ID_TDP
CLOCK_LIMIT_UNLIMITED = pynvml.NVML_CLOCK_LIMIT_ID_UNLIMITED

_ERROR_STRINGS = {
    SUCCESS: "Success", UNINITIALIZED: "Uninitialized", INVALID_ARGUMENT: "Invalid Argument",
    NOT_SUPPORTED: "Not Supported", NO_PERMISSION: "Insufficient Permissions", NOT_FOUND: "Not Found",
    INSUFFICIENT_SIZE: "Insufficient Size", DRIVER_NOT_LOADED: "Driver Not Loaded",
    FUNCTION_NOT_FOUND: "Function Not Found", GPU_IS_LOST: "GPU is lost",
    ARGUMENT_VERSION_MISMATCH: "Argument version mismatch",
}
_MUTABLE_KEYS = ("gpu_locked_clocks", "memory_locked_clocks", "power_limit_mw", "persistence_mode", "compute_mode")
_CLOCK_KEYS = {pynvml.NVML_CLOCK_GRAPHICS: "graphics_mhz", pynvml.NVML_CLOCK_SM: "sm_mhz",
               pynvml.NVML_CLOCK_MEM: "mem_mhz", pynvml.NVML_CLOCK_VIDEO: "video_mhz"}


def _out(arg: Any) -> Any:
    """The object behind a byref() out-pointer (or the object itself when the binding passed it directly)."""
    return getattr(arg, "_obj", arg)


def _value(arg: Any) -> Any:
    """A by-value argument: ctypes scalars carry .value, plain ints pass through."""
    return arg.value if hasattr(arg, "value") else arg


def _fill_str(buf: Any, size: Any, text: str) -> int:
    data = text.encode()
    if len(data) + 1 > int(_value(size)):
        return INSUFFICIENT_SIZE
    buf.value = data
    return SUCCESS


def _expand_clocks(spec: Any, where: str) -> list[int]:
    if isinstance(spec, list):
        return sorted((int(v) for v in spec), reverse=True)
    if isinstance(spec, dict) and {"from", "to"} <= spec.keys():
        lo, hi, step = int(spec["from"]), int(spec["to"]), int(spec.get("step", 1))
        if step <= 0 or lo > hi:
            raise InputError("clock range needs from <= to and step > 0", field=where)
        return sorted(range(lo, hi + 1, step), reverse=True)
    raise InputError("expected a list of MHz or {from, to, step}", field=where)


class SimGpu:
    """One simulated GPU: the static description plus a handle the binding can carry around."""

    def __init__(self, index: int, desc: dict[str, Any], where: str) -> None:
        for key in ("name", "uuid", "pci_bus_id"):
            if not isinstance(desc.get(key), str):
                raise InputError(f"missing or not a string: {key}", field=f"{where}.{key}")
        self.index = index
        self.desc = desc
        self.uuid: str = desc["uuid"]
        self.handle_buf = ctypes.create_string_buffer(16)  # a real address for the opaque device handle
        self.address = ctypes.addressof(self.handle_buf)
        self.not_supported: set[str] = set(desc.get("not_supported", []))
        self.errors: dict[str, int] = {k: int(v) for k, v in desc.get("errors", {}).items()}
        self.lost = bool(desc.get("lost", False))
        self.memory_clocks = sorted((int(v) for v in desc.get("supported_memory_clocks_mhz", [])), reverse=True)
        self.graphics_clocks = {int(mem): _expand_clocks(spec, f"{where}.supported_graphics_clocks_mhz.{mem}")
                                for mem, spec in desc.get("supported_graphics_clocks_mhz", {}).items()}
        power = desc.get("power", {})
        self.power = {k: power.get(k) for k in ("limit_mw", "default_limit_mw", "min_limit_mw", "max_limit_mw",
                                                 "usage_mw")}

    def initial_state(self) -> dict[str, Any]:
        return {"gpu_locked_clocks": None, "memory_locked_clocks": None, "power_limit_mw": self.power["limit_mw"],
                "persistence_mode": int(self.desc.get("persistence_mode", 0)),
                "compute_mode": int(self.desc.get("compute_mode", 0))}

    def clock(self, group: str, key: str) -> int | None:
        value = self.desc.get(group, {}).get(key)
        if value is None and key == "graphics_mhz":
            value = self.desc.get(group, {}).get("sm_mhz")
        return None if value is None else int(value)

    @property
    def graphics_range(self) -> tuple[int, int] | None:
        every = [mhz for clocks in self.graphics_clocks.values() for mhz in clocks]
        top = self.clock("max_clocks", "sm_mhz")
        if not every and top is None:
            return None
        return (min(every) if every else 0, top if top is not None else max(every))

    @property
    def memory_range(self) -> tuple[int, int] | None:
        top = self.clock("max_clocks", "mem_mhz")
        if not self.memory_clocks and top is None:
            return None
        return (min(self.memory_clocks) if self.memory_clocks else 0,
                top if top is not None else max(self.memory_clocks))


class NvmlSimulator:
    """The simulated library. `functions` maps C names to callables; `calls` records every call made."""

    def __init__(self, description: dict[str, Any], *, source: Path | None = None,
                 state_file: Path | None = None, call_log: Path | None = None) -> None:
        self.description = description
        self.source = source
        self.library_missing = description.get("library") == "missing"
        self.driver_not_loaded = description.get("driver") == "not_loaded"
        self.root = bool(description.get("root", True))
        self.errors: dict[str, int] = {k: int(v) for k, v in description.get("errors", {}).items()}
        self.not_supported: set[str] = set(description.get("not_supported", []))
        gpus = description.get("gpus", [])
        if not isinstance(gpus, list):
            raise InputError("gpus must be a list", path=source, field="gpus")
        try:
            self.gpus = [SimGpu(i, g, f"gpus[{i}]") for i, g in enumerate(gpus)]
        except InputError as e:
            e.path = str(source) if source else None
            raise
        self.by_address = {g.address: g for g in self.gpus}
        self.state_file = state_file
        self.call_log = call_log
        self.calls: list[str] = []
        self.init_count = 0
        self._lock = threading.Lock()
        self._memory_state = {g.uuid: g.initial_state() for g in self.gpus}
        self.functions: dict[str, Callable[..., int]] = {
            name[len("_c_"):]: getattr(self, name) for name in dir(self) if name.startswith("_c_")}

    # --- state (optionally shared across processes through a locked JSON file) ---

    @contextlib.contextmanager
    def _state(self, write: bool) -> Iterator[dict[str, dict[str, Any]]]:
        if self.state_file is None:
            with self._lock:
                yield self._memory_state
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.state_file.with_name(self.state_file.name + ".lock"), "a+") as lockf:
            fcntl.flock(lockf, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            state = copy.deepcopy(self._memory_state)
            if self.state_file.exists():
                saved = json.loads(read_text_capped(self.state_file) or "{}")
                for uuid, values in saved.get("gpus", {}).items():
                    if uuid in state:
                        state[uuid].update({k: v for k, v in values.items() if k in _MUTABLE_KEYS})
            yield state
            if write:
                tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}")
                tmp.write_text(json.dumps({"gpus": state}, indent=2, sort_keys=True) + "\n")
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, self.state_file)

    def state_of(self, index: int) -> dict[str, Any]:
        """The current mutable state of GPU `index` (as another process would see it)."""
        with self._state(write=False) as state:
            return dict(state[self.gpus[index].uuid])

    # --- the lookup pynvml sees in place of dlsym() ---

    def lookup(self, name: str) -> Callable[..., int]:
        if pynvml.nvmlLib is None:
            raise pynvml.NVMLError(UNINITIALIZED)
        impl = self.functions.get(name)
        if impl is None:
            raise pynvml.NVMLError(FUNCTION_NOT_FOUND)

        def c_function(*args: Any) -> Any:
            self._record(name)
            return impl(*args)

        c_function.__name__ = name
        return c_function

    def _record(self, name: str) -> None:
        self.calls.append(name)
        if self.call_log is not None:
            with open(self.call_log, "a") as f:
                f.write(name + "\n")

    def _pre(self, name: str, handle: Any = None) -> tuple[int, SimGpu | None]:
        """Checks every C function makes first: initialised, a valid handle, injected errors, support."""
        if self.init_count <= 0:
            return UNINITIALIZED, None
        gpu = None
        if handle is not None:
            address = ctypes.cast(handle, ctypes.c_void_p).value if not isinstance(handle, int) else handle
            gpu = self.by_address.get(address or 0)
            if gpu is None:
                return INVALID_ARGUMENT, None
            if gpu.lost:
                return GPU_IS_LOST, gpu
            if name in gpu.errors:
                return gpu.errors[name], gpu
            if name in gpu.not_supported:
                return NOT_SUPPORTED, gpu
        if name in self.errors:
            return self.errors[name], gpu
        if name in self.not_supported:
            return NOT_SUPPORTED, gpu
        return SUCCESS, gpu

    def _setter_pre(self, name: str, handle: Any) -> tuple[int, SimGpu | None]:
        rc, gpu = self._pre(name, handle)
        if rc == SUCCESS and not self.root:
            return NO_PERMISSION, gpu
        return rc, gpu

    # --- system ---

    def _c_nvmlInitWithFlags(self, flags: Any) -> int:
        if self.driver_not_loaded:
            return DRIVER_NOT_LOADED
        if "nvmlInitWithFlags" in self.errors:
            return self.errors["nvmlInitWithFlags"]
        self.init_count += 1
        return SUCCESS

    def _c_nvmlInit_v2(self) -> int:
        return self._c_nvmlInitWithFlags(0)

    def _c_nvmlShutdown(self) -> int:
        if self.init_count <= 0:
            return UNINITIALIZED
        self.init_count -= 1
        return SUCCESS

    def _c_nvmlErrorString(self, result: Any) -> bytes:
        return _ERROR_STRINGS.get(int(_value(result)), "Unknown Error").encode()

    def _c_nvmlSystemGetDriverVersion(self, buf: Any, size: Any) -> int:
        rc, _ = self._pre("nvmlSystemGetDriverVersion")
        return rc if rc else _fill_str(buf, size, str(self.description.get("driver_version", "")))

    def _c_nvmlSystemGetNVMLVersion(self, buf: Any, size: Any) -> int:
        rc, _ = self._pre("nvmlSystemGetNVMLVersion")
        return rc if rc else _fill_str(buf, size, str(self.description.get("nvml_version", "")))

    def _cuda_version(self, name: str, out: Any) -> int:
        rc, _ = self._pre(name)
        if rc == SUCCESS:
            _out(out).value = int(self.description.get("cuda_driver_version", 0))
        return rc

    def _c_nvmlSystemGetCudaDriverVersion(self, out: Any) -> int:
        return self._cuda_version("nvmlSystemGetCudaDriverVersion", out)

    def _c_nvmlSystemGetCudaDriverVersion_v2(self, out: Any) -> int:
        return self._cuda_version("nvmlSystemGetCudaDriverVersion_v2", out)

    def _c_nvmlDeviceGetCount_v2(self, out: Any) -> int:
        rc, _ = self._pre("nvmlDeviceGetCount_v2")
        if rc == SUCCESS:
            _out(out).value = len(self.gpus)
        return rc

    # --- handles and identity ---

    @staticmethod
    def _set_handle(out: Any, gpu: SimGpu) -> int:
        ctypes.c_void_p.from_buffer(_out(out)).value = gpu.address
        return SUCCESS

    def _c_nvmlDeviceGetHandleByIndex_v2(self, index: Any, out: Any) -> int:
        rc, _ = self._pre("nvmlDeviceGetHandleByIndex_v2")
        if rc:
            return rc
        i = int(_value(index))
        if not 0 <= i < len(self.gpus):
            return INVALID_ARGUMENT
        return self._set_handle(out, self.gpus[i])

    def _c_nvmlDeviceGetHandleByUUID(self, uuid: Any, out: Any) -> int:
        rc, _ = self._pre("nvmlDeviceGetHandleByUUID")
        if rc:
            return rc
        wanted = (_value(uuid) or b"").decode()
        gpu = next((g for g in self.gpus if g.uuid == wanted), None)
        return self._set_handle(out, gpu) if gpu else NOT_FOUND

    def _c_nvmlDeviceGetHandleByPciBusId_v2(self, bus_id: Any, out: Any) -> int:
        rc, _ = self._pre("nvmlDeviceGetHandleByPciBusId_v2")
        if rc:
            return rc
        wanted = _canonical_bus_id((_value(bus_id) or b"").decode())
        gpu = next((g for g in self.gpus if _canonical_bus_id(g.desc["pci_bus_id"]) == wanted), None)
        return self._set_handle(out, gpu) if gpu else NOT_FOUND

    def _c_nvmlDeviceGetIndex(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetIndex", handle)
        if rc == SUCCESS and gpu:
            _out(out).value = gpu.index
        return rc

    def _c_nvmlDeviceGetMinorNumber(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetMinorNumber", handle)
        if rc == SUCCESS and gpu:
            _out(out).value = int(gpu.desc.get("minor_number", gpu.index))
        return rc

    def _c_nvmlDeviceGetName(self, handle: Any, buf: Any, size: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetName", handle)
        return rc if rc or gpu is None else _fill_str(buf, size, gpu.desc["name"])

    def _c_nvmlDeviceGetUUID(self, handle: Any, buf: Any, size: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetUUID", handle)
        return rc if rc or gpu is None else _fill_str(buf, size, gpu.uuid)

    def _c_nvmlDeviceGetPciInfo_v3(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetPciInfo_v3", handle)
        if rc or gpu is None:
            return rc
        info = _out(out)
        domain, bus, devfn = gpu.desc["pci_bus_id"].split(":")
        dev, _fn = devfn.split(".")
        long_id = f"{int(domain, 16):08X}:{int(bus, 16):02X}:{int(dev, 16):02X}.{_fn}"
        info.busId = long_id.encode()
        info.busIdLegacy = f"{int(domain, 16):04X}:{int(bus, 16):02X}:{int(dev, 16):02X}.{_fn}".encode()
        info.domain, info.bus, info.device = int(domain, 16), int(bus, 16), int(dev, 16)
        info.pciDeviceId = int(str(gpu.desc.get("pci_device_id", "0")), 0)
        info.pciSubSystemId = int(str(gpu.desc.get("pci_subsystem_id", "0")), 0)
        return SUCCESS

    def _c_nvmlDeviceGetCudaComputeCapability(self, handle: Any, major: Any, minor: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetCudaComputeCapability", handle)
        if rc == SUCCESS and gpu:
            cc = gpu.desc.get("cuda_compute_capability", [9, 0])
            _out(major).value, _out(minor).value = int(cc[0]), int(cc[1])
        return rc

    def _c_nvmlDeviceGetArchitecture(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetArchitecture", handle)
        if rc == SUCCESS and gpu:
            _out(out).value = int(gpu.desc.get("architecture", pynvml.NVML_DEVICE_ARCH_HOPPER))
        return rc

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
        mem = _out(out)
        mem.total, mem.used, mem.free = total, used + reserved, total - used - reserved
        return SUCCESS

    def _c_nvmlDeviceGetMemoryInfo_v2(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetMemoryInfo_v2", handle)
        if rc or gpu is None:
            return rc
        mem = _out(out)
        if mem.version != pynvml.nvmlMemory_v2:
            return ARGUMENT_VERSION_MISMATCH
        total, used, reserved = self._memory(gpu)
        mem.total, mem.reserved, mem.used, mem.free = total, reserved, used, total - used - reserved
        return SUCCESS

    def _c_nvmlDeviceGetUtilizationRates(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetUtilizationRates", handle)
        if rc == SUCCESS and gpu:
            util = gpu.desc.get("utilization", {})
            _out(out).gpu, _out(out).memory = int(util.get("gpu", 0)), int(util.get("memory", 0))
        return rc

    def _c_nvmlDeviceGetTemperature(self, handle: Any, sensor: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetTemperature", handle)
        if rc or gpu is None:
            return rc
        if int(_value(sensor)) != pynvml.NVML_TEMPERATURE_GPU:
            return INVALID_ARGUMENT
        _out(out).value = int(gpu.desc.get("temperature_c", 35))
        return SUCCESS

    def _c_nvmlDeviceGetTemperatureV(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetTemperatureV", handle)
        if rc or gpu is None:
            return rc
        temp = _out(out)
        if temp.version != pynvml.nvmlTemperature_v1:
            return ARGUMENT_VERSION_MISMATCH
        if temp.sensorType != pynvml.NVML_TEMPERATURE_GPU:
            return INVALID_ARGUMENT
        temp.temperature = int(gpu.desc.get("temperature_c", 35))
        return SUCCESS

    def _event_reasons(self, name: str, handle: Any, out: Any) -> int:
        rc, gpu = self._pre(name, handle)
        if rc == SUCCESS and gpu:
            _out(out).value = int(gpu.desc.get("clocks_event_reasons", pynvml.nvmlClocksEventReasonGpuIdle))
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
        key = _CLOCK_KEYS.get(int(_value(ctype)))
        if key is None:
            return INVALID_ARGUMENT
        value = self._current_clock(gpu, key) if group == "clocks" else gpu.clock(group, key)
        if value is None:
            return NOT_SUPPORTED
        _out(out).value = value
        return SUCCESS

    def _c_nvmlDeviceGetClockInfo(self, handle: Any, ctype: Any, out: Any) -> int:
        return self._clock_out("nvmlDeviceGetClockInfo", handle, ctype, out, "clocks")

    def _c_nvmlDeviceGetMaxClockInfo(self, handle: Any, ctype: Any, out: Any) -> int:
        return self._clock_out("nvmlDeviceGetMaxClockInfo", handle, ctype, out, "max_clocks")

    def _c_nvmlDeviceGetClock(self, handle: Any, ctype: Any, clock_id: Any, out: Any) -> int:
        group = {pynvml.NVML_CLOCK_ID_CURRENT: "clocks", pynvml.NVML_CLOCK_ID_CUSTOMER_BOOST_MAX: "max_clocks",
                 pynvml.NVML_CLOCK_ID_APP_CLOCK_DEFAULT: "base_clocks",
                 pynvml.NVML_CLOCK_ID_APP_CLOCK_TARGET: "base_clocks"}.get(int(_value(clock_id)))
        if group is None:
            rc, _ = self._pre("nvmlDeviceGetClock", handle)
            return rc or INVALID_ARGUMENT
        return self._clock_out("nvmlDeviceGetClock", handle, ctype, out, group)

    @staticmethod
    def _fill_array(count: Any, array: Any, values: list[int]) -> int:
        counter = _out(count)
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
        clocks = gpu.graphics_clocks.get(int(_value(mem_mhz)))
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
        _out(out).value = int(value)
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
        _out(lo).value, _out(hi).value = int(gpu.power["min_limit_mw"]), int(gpu.power["max_limit_mw"])
        return SUCCESS

    def _c_nvmlDeviceGetPersistenceMode(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetPersistenceMode", handle)
        if rc == SUCCESS and gpu:
            _out(out).value = int(self.state_of(gpu.index)["persistence_mode"])
        return rc

    def _c_nvmlDeviceGetComputeMode(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetComputeMode", handle)
        if rc == SUCCESS and gpu:
            _out(out).value = int(self.state_of(gpu.index)["compute_mode"])
        return rc

    # --- setters and resets ---

    def _change(self, gpu: SimGpu, **values: Any) -> int:
        with self._state(write=True) as state:
            state[gpu.uuid].update(values)
        return SUCCESS

    def _resolve_lock(self, gpu: SimGpu, mhz: int) -> int:
        if mhz == CLOCK_LIMIT_TDP:
            base = gpu.clock("base_clocks", "sm_mhz")
            return base if base is not None else -1
        if mhz == CLOCK_LIMIT_UNLIMITED:
            top = gpu.clock("max_clocks", "sm_mhz")
            return top if top is not None else -1
        return mhz

    def _c_nvmlDeviceSetGpuLockedClocks(self, handle: Any, lo: Any, hi: Any) -> int:
        rc, gpu = self._setter_pre("nvmlDeviceSetGpuLockedClocks", handle)
        if rc or gpu is None:
            return rc
        bounds = gpu.graphics_range
        if bounds is None:
            return NOT_SUPPORTED
        low, high = self._resolve_lock(gpu, int(_value(lo))), self._resolve_lock(gpu, int(_value(hi)))
        if low < 0 or high < 0 or low > high or low < bounds[0] or high > bounds[1]:
            return INVALID_ARGUMENT
        return self._change(gpu, gpu_locked_clocks=[low, high])

    def _c_nvmlDeviceSetMemoryLockedClocks(self, handle: Any, lo: Any, hi: Any) -> int:
        rc, gpu = self._setter_pre("nvmlDeviceSetMemoryLockedClocks", handle)
        if rc or gpu is None:
            return rc
        bounds = gpu.memory_range
        if bounds is None:
            return NOT_SUPPORTED
        low, high = int(_value(lo)), int(_value(hi))
        if low > high or low < bounds[0] or high > bounds[1]:
            return INVALID_ARGUMENT
        return self._change(gpu, memory_locked_clocks=[low, high])

    def _c_nvmlDeviceResetGpuLockedClocks(self, handle: Any) -> int:
        rc, gpu = self._setter_pre("nvmlDeviceResetGpuLockedClocks", handle)
        return rc if rc or gpu is None else self._change(gpu, gpu_locked_clocks=None)

    def _c_nvmlDeviceResetMemoryLockedClocks(self, handle: Any) -> int:
        rc, gpu = self._setter_pre("nvmlDeviceResetMemoryLockedClocks", handle)
        return rc if rc or gpu is None else self._change(gpu, memory_locked_clocks=None)

    def _set_power(self, name: str, handle: Any, mw: int) -> int:
        rc, gpu = self._setter_pre(name, handle)
        if rc or gpu is None:
            return rc
        lo, hi = gpu.power["min_limit_mw"], gpu.power["max_limit_mw"]
        if lo is None or hi is None:
            return NOT_SUPPORTED
        if not int(lo) <= mw <= int(hi):
            return INVALID_ARGUMENT
        return self._change(gpu, power_limit_mw=mw)

    def _c_nvmlDeviceSetPowerManagementLimit(self, handle: Any, mw: Any) -> int:
        return self._set_power("nvmlDeviceSetPowerManagementLimit", handle, int(_value(mw)))

    def _c_nvmlDeviceSetPowerManagementLimit_v2(self, handle: Any, value: Any) -> int:
        power = _out(value)
        if power.version != pynvml.nvmlPowerValue_v2:
            return ARGUMENT_VERSION_MISMATCH
        return self._set_power("nvmlDeviceSetPowerManagementLimit_v2", handle, int(power.powerValueMw))

    def _c_nvmlDeviceSetPersistenceMode(self, handle: Any, mode: Any) -> int:
        rc, gpu = self._setter_pre("nvmlDeviceSetPersistenceMode", handle)
        if rc or gpu is None:
            return rc
        value = int(_value(mode))
        if value not in (pynvml.NVML_FEATURE_DISABLED, pynvml.NVML_FEATURE_ENABLED):
            return INVALID_ARGUMENT
        return self._change(gpu, persistence_mode=value)

    def _c_nvmlDeviceSetComputeMode(self, handle: Any, mode: Any) -> int:
        rc, gpu = self._setter_pre("nvmlDeviceSetComputeMode", handle)
        if rc or gpu is None:
            return rc
        value = int(_value(mode))
        if value not in (pynvml.NVML_COMPUTEMODE_DEFAULT, pynvml.NVML_COMPUTEMODE_PROHIBITED,
                         pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS):
            return INVALID_ARGUMENT
        return self._change(gpu, compute_mode=value)


def _canonical_bus_id(bus_id: str) -> str:
    """'00000000:18:00.0' or '0000:18:00.0' -> '0000:18:00.0' (lowercase, 4-digit domain), sysfs style."""
    try:
        domain, bus, devfn = bus_id.strip().split(":")
        dev, fn = devfn.split(".")
        return f"{int(domain, 16):04x}:{int(bus, 16):02x}:{int(dev, 16):02x}.{int(fn, 16):x}"
    except ValueError:
        return bus_id.strip().lower()


def load_description(path: Path) -> dict[str, Any]:
    """Read a simulator description; bad JSON is an InputError naming file:line."""
    try:
        text = read_text_capped(path)
    except OSError as e:
        raise InputError(f"cannot read NVML simulation file: {e.strerror}", path=path, field="--nvml-sim") from e
    except UnicodeDecodeError:
        raise InputError("NVML simulation file is not valid UTF-8", path=path, field="--nvml-sim") from None
    try:
        desc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", path=path, line=e.lineno) from None
    if not isinstance(desc, dict):
        raise InputError("expected a JSON object", path=path)
    return desc


# --- installing into pynvml (process-global, like the real library) ---

_installed: NvmlSimulator | None = None
_saved: dict[str, Any] = {}


class _SimulatedLibrary:
    """What pynvml's CDLL("libnvidia-ml.so.1") returns while the simulator is installed."""

    def __init__(self, sim: NvmlSimulator) -> None:
        self.sim = sim


def _make_loader(sim: NvmlSimulator) -> Callable[..., Any]:
    def cdll(name: str, *args: Any, **kwargs: Any) -> Any:
        if sim.library_missing:
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")
        return _SimulatedLibrary(sim)

    return cdll


def install(source: Path | dict[str, Any], *, state_file: Path | None = None,
            call_log: Path | None = None) -> NvmlSimulator:
    """Make pynvml talk to a simulator built from a description (file or dict). Replaces any simulator installed."""
    uninstall()
    path = source if isinstance(source, Path) else None
    desc = load_description(source) if isinstance(source, Path) else source
    base = path.parent if path else Path.cwd()
    if state_file is None:
        configured = os.environ.get(ENV_STATE) or desc.get("state_file")
        state_file = (base / configured) if configured else None
    if call_log is None:
        configured = os.environ.get(ENV_LOG) or desc.get("call_log")
        call_log = (base / configured) if configured else None
    sim = NvmlSimulator(desc, source=path, state_file=state_file, call_log=call_log)
    global _installed
    _saved.update(CDLL=pynvml.CDLL, lookup=pynvml._nvmlGetFunctionPointer, lib=pynvml.nvmlLib,
                  refcount=pynvml._nvmlLib_refcount)
    pynvml.CDLL = _make_loader(sim)
    pynvml._nvmlGetFunctionPointer = sim.lookup
    pynvml.nvmlLib = None
    pynvml._nvmlLib_refcount = 0
    pynvml._nvmlGetFunctionPointer_cache.clear()
    _installed = sim
    return sim


def uninstall() -> None:
    """Give pynvml its real library loader back (no-op when nothing is installed)."""
    global _installed
    if _installed is None:
        return
    pynvml.CDLL = _saved["CDLL"]
    pynvml._nvmlGetFunctionPointer = _saved["lookup"]
    pynvml.nvmlLib = _saved["lib"]
    pynvml._nvmlLib_refcount = _saved["refcount"]
    pynvml._nvmlGetFunctionPointer_cache.clear()
    _saved.clear()
    _installed = None


def installed() -> NvmlSimulator | None:
    return _installed


@contextlib.contextmanager
def simulated(source: Path | dict[str, Any], **kwargs: Any) -> Iterator[NvmlSimulator]:
    """install() for the duration of a block (tests)."""
    sim = install(source, **kwargs)
    try:
        yield sim
    finally:
        uninstall()
