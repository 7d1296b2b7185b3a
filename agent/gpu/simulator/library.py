"""A stand-in for libnvidia-ml at the C-function level, under the real pynvml binding.

Why this shape: the code under test (agent.gpu.nvml, the inspector, the GPU tuner) and NVIDIA's own Python binding
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
             "persistence_mode", "compute_mode", "ecc", "xid_events", "not_supported": [fn], "errors": {fn: code},
             "lost": false, ...}]}
supported_graphics_clocks_mhz maps a memory clock to a list of MHz or to {"from": lo, "to": hi, "step": s}.

Setters validate like the library (INVALID_ARGUMENT outside the GPU's constraints, NO_PERMISSION when
"root": false) and change the simulated state. With a state file (env HOSTTUNE_NVML_SIM_STATE, else the
description's "state_file") that state lives on disk under a lock, so a second process sees what a first one
set: that is what crash tests need. Every C call is recorded in `calls` and, with env HOSTTUNE_NVML_SIM_LOG
(or "call_log"), appended to that file one name per line, so tests can prove what reached the "library".
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml

from agent.gpu.simulator.description import (
    ARGUMENT_VERSION_MISMATCH,
    CLOCK_LIMIT_TDP,
    CLOCK_LIMIT_UNLIMITED,
    ENV_LOG,
    ENV_STATE,
    INVALID_ARGUMENT,
    NOT_SUPPORTED,
    SUCCESS,
    SimGpu,
    deref,
    load_description,
    scalar,
)
from agent.gpu.simulator.health import SimulatorHealth


class NvmlSimulator(SimulatorHealth):
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
        low, high = self._resolve_lock(gpu, int(scalar(lo))), self._resolve_lock(gpu, int(scalar(hi)))
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
        low, high = int(scalar(lo)), int(scalar(hi))
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
        return self._set_power("nvmlDeviceSetPowerManagementLimit", handle, int(scalar(mw)))

    def _c_nvmlDeviceSetPowerManagementLimit_v2(self, handle: Any, value: Any) -> int:
        power = deref(value)
        if power.version != pynvml.nvmlPowerValue_v2:
            return ARGUMENT_VERSION_MISMATCH
        return self._set_power("nvmlDeviceSetPowerManagementLimit_v2", handle, int(power.powerValueMw))

    def _c_nvmlDeviceSetPersistenceMode(self, handle: Any, mode: Any) -> int:
        rc, gpu = self._setter_pre("nvmlDeviceSetPersistenceMode", handle)
        if rc or gpu is None:
            return rc
        value = int(scalar(mode))
        if value not in (pynvml.NVML_FEATURE_DISABLED, pynvml.NVML_FEATURE_ENABLED):
            return INVALID_ARGUMENT
        return self._change(gpu, persistence_mode=value)

    def _c_nvmlDeviceSetComputeMode(self, handle: Any, mode: Any) -> int:
        rc, gpu = self._setter_pre("nvmlDeviceSetComputeMode", handle)
        if rc or gpu is None:
            return rc
        value = int(scalar(mode))
        if value not in (pynvml.NVML_COMPUTEMODE_DEFAULT, pynvml.NVML_COMPUTEMODE_PROHIBITED,
                         pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS):
            return INVALID_ARGUMENT
        return self._change(gpu, compute_mode=value)


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
