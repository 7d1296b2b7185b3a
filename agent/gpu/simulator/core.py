"""The simulated library's core: state (optionally shared across processes), lookup, checks, system calls,
handles and identity."""

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
from agent.gpu.simulator.description import (
    DRIVER_NOT_LOADED,
    ERROR_STRINGS,
    FUNCTION_NOT_FOUND,
    GPU_IS_LOST,
    INVALID_ARGUMENT,
    MUTABLE_KEYS,
    NO_PERMISSION,
    NOT_FOUND,
    NOT_SUPPORTED,
    SUCCESS,
    UNINITIALIZED,
    SimGpu,
    canonical_bus_id,
    deref,
    fill_str,
    scalar,
)


class SimulatorCore:
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
                        state[uuid].update({k: v for k, v in values.items() if k in MUTABLE_KEYS})
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
        return ERROR_STRINGS.get(int(scalar(result)), "Unknown Error").encode()

    def _c_nvmlSystemGetDriverVersion(self, buf: Any, size: Any) -> int:
        rc, _ = self._pre("nvmlSystemGetDriverVersion")
        return rc if rc else fill_str(buf, size, str(self.description.get("driver_version", "")))

    def _c_nvmlSystemGetNVMLVersion(self, buf: Any, size: Any) -> int:
        rc, _ = self._pre("nvmlSystemGetNVMLVersion")
        return rc if rc else fill_str(buf, size, str(self.description.get("nvml_version", "")))

    def _cuda_version(self, name: str, out: Any) -> int:
        rc, _ = self._pre(name)
        if rc == SUCCESS:
            deref(out).value = int(self.description.get("cuda_driver_version", 0))
        return rc

    def _c_nvmlSystemGetCudaDriverVersion(self, out: Any) -> int:
        return self._cuda_version("nvmlSystemGetCudaDriverVersion", out)

    def _c_nvmlSystemGetCudaDriverVersion_v2(self, out: Any) -> int:
        return self._cuda_version("nvmlSystemGetCudaDriverVersion_v2", out)

    def _c_nvmlDeviceGetCount_v2(self, out: Any) -> int:
        rc, _ = self._pre("nvmlDeviceGetCount_v2")
        if rc == SUCCESS:
            deref(out).value = len(self.gpus)
        return rc

    # --- handles and identity ---

    @staticmethod
    def _set_handle(out: Any, gpu: SimGpu) -> int:
        ctypes.c_void_p.from_buffer(deref(out)).value = gpu.address
        return SUCCESS

    def _c_nvmlDeviceGetHandleByIndex_v2(self, index: Any, out: Any) -> int:
        rc, _ = self._pre("nvmlDeviceGetHandleByIndex_v2")
        if rc:
            return rc
        i = int(scalar(index))
        if not 0 <= i < len(self.gpus):
            return INVALID_ARGUMENT
        return self._set_handle(out, self.gpus[i])

    def _c_nvmlDeviceGetHandleByUUID(self, uuid: Any, out: Any) -> int:
        rc, _ = self._pre("nvmlDeviceGetHandleByUUID")
        if rc:
            return rc
        wanted = (scalar(uuid) or b"").decode()
        gpu = next((g for g in self.gpus if g.uuid == wanted), None)
        return self._set_handle(out, gpu) if gpu else NOT_FOUND

    def _c_nvmlDeviceGetHandleByPciBusId_v2(self, bus_id: Any, out: Any) -> int:
        rc, _ = self._pre("nvmlDeviceGetHandleByPciBusId_v2")
        if rc:
            return rc
        wanted = canonical_bus_id((scalar(bus_id) or b"").decode())
        gpu = next((g for g in self.gpus if canonical_bus_id(g.desc["pci_bus_id"]) == wanted), None)
        return self._set_handle(out, gpu) if gpu else NOT_FOUND

    def _c_nvmlDeviceGetIndex(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetIndex", handle)
        if rc == SUCCESS and gpu:
            deref(out).value = gpu.index
        return rc

    def _c_nvmlDeviceGetMinorNumber(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetMinorNumber", handle)
        if rc == SUCCESS and gpu:
            deref(out).value = int(gpu.desc.get("minor_number", gpu.index))
        return rc

    def _c_nvmlDeviceGetName(self, handle: Any, buf: Any, size: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetName", handle)
        return rc if rc or gpu is None else fill_str(buf, size, gpu.desc["name"])

    def _c_nvmlDeviceGetUUID(self, handle: Any, buf: Any, size: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetUUID", handle)
        return rc if rc or gpu is None else fill_str(buf, size, gpu.uuid)

    def _c_nvmlDeviceGetPciInfo_v3(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetPciInfo_v3", handle)
        if rc or gpu is None:
            return rc
        info = deref(out)
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
            deref(major).value, deref(minor).value = int(cc[0]), int(cc[1])
        return rc

    def _c_nvmlDeviceGetArchitecture(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetArchitecture", handle)
        if rc == SUCCESS and gpu:
            deref(out).value = int(gpu.desc.get("architecture", pynvml.NVML_DEVICE_ARCH_HOPPER))
        return rc
