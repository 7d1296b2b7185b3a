"""The simulated library's health reads: volatile ECC counters and the Xid event API.

Description keys, per GPU:
  "ecc": {"enabled": true, "sbe_volatile": 3, "dbe_volatile": 0}   absent: ECC not supported (NOT_SUPPORTED);
                                                                   enabled false: mode off, counters NOT_SUPPORTED
  "supported_event_types": mask                                    default nvmlEventTypeAll
  "xid_events": [79, 48]                                           delivered to each event set the GPU is
                                                                   registered in, right after registration
`NvmlSimulator.xid(index, code)` delivers one more Xid to every event set the GPU is registered in, as the driver
would when the GPU reports it. nvmlEventSetWait_v2 never blocks here: an empty queue answers TIMEOUT at once.
"""

from __future__ import annotations

import ctypes
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml

from agent.gpu.simulator.description import (
    INVALID_ARGUMENT,
    NOT_SUPPORTED,
    SUCCESS,
    TIMEOUT,
    SimGpu,
    deref,
    scalar,
)
from agent.gpu.simulator.reads import SimulatorReads

XID = pynvml.nvmlEventTypeXidCriticalError
_ECC_KEYS = {(pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC): "sbe_volatile",
             (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC): "dbe_volatile",
             (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC): "sbe_aggregate",
             (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC): "dbe_aggregate"}


@dataclass
class _EventSet:
    buf: Any = field(default_factory=lambda: ctypes.create_string_buffer(16))  # a real address for the handle
    registered: dict[str, int] = field(default_factory=dict)                  # uuid -> event type mask
    queue: deque[tuple[SimGpu, int, int]] = field(default_factory=deque)      # (gpu, event type, event data)


def _address(pointer: Any) -> int:
    return int(pointer) if isinstance(pointer, int) else (ctypes.cast(pointer, ctypes.c_void_p).value or 0)


class SimulatorHealth(SimulatorReads):
    def __init__(self, description: dict[str, Any], *, source: Path | None = None,
                 state_file: Path | None = None, call_log: Path | None = None) -> None:
        super().__init__(description, source=source, state_file=state_file, call_log=call_log)
        self._event_sets: dict[int, _EventSet] = {}

    def xid(self, index: int, code: int) -> None:
        """GPU `index` reports Xid `code`: every event set it is registered in for Xid events gets it."""
        gpu = self.gpus[index]
        with self._lock:
            for es in self._event_sets.values():
                if es.registered.get(gpu.uuid, 0) & XID:
                    es.queue.append((gpu, XID, int(code)))

    # --- ECC ---

    def _c_nvmlDeviceGetEccMode(self, handle: Any, current: Any, pending: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetEccMode", handle)
        if rc or gpu is None:
            return rc
        ecc = gpu.desc.get("ecc")
        if ecc is None:
            return NOT_SUPPORTED
        mode = pynvml.NVML_FEATURE_ENABLED if ecc.get("enabled", True) else pynvml.NVML_FEATURE_DISABLED
        deref(current).value = deref(pending).value = mode
        return SUCCESS

    def _c_nvmlDeviceGetTotalEccErrors(self, handle: Any, error_type: Any, counter_type: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetTotalEccErrors", handle)
        if rc or gpu is None:
            return rc
        ecc = gpu.desc.get("ecc")
        if ecc is None or not ecc.get("enabled", True):
            return NOT_SUPPORTED
        key = _ECC_KEYS.get((int(scalar(error_type)), int(scalar(counter_type))))
        if key is None:
            return INVALID_ARGUMENT
        deref(out).value = int(ecc.get(key, 0))
        return SUCCESS

    # --- events ---

    def _c_nvmlDeviceGetSupportedEventTypes(self, handle: Any, out: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceGetSupportedEventTypes", handle)
        if rc == SUCCESS and gpu:
            deref(out).value = int(gpu.desc.get("supported_event_types", pynvml.nvmlEventTypeAll))
        return rc

    def _c_nvmlEventSetCreate(self, out: Any) -> int:
        rc, _ = self._pre("nvmlEventSetCreate")
        if rc:
            return rc
        es = _EventSet()
        address = ctypes.addressof(es.buf)
        with self._lock:
            self._event_sets[address] = es
        ctypes.c_void_p.from_buffer(deref(out)).value = address
        return SUCCESS

    def _c_nvmlDeviceRegisterEvents(self, handle: Any, event_types: Any, event_set: Any) -> int:
        rc, gpu = self._pre("nvmlDeviceRegisterEvents", handle)
        if rc or gpu is None:
            return rc
        wanted = int(scalar(event_types))
        with self._lock:
            es = self._event_sets.get(_address(event_set))
            if es is None:
                return INVALID_ARGUMENT
            supported = int(gpu.desc.get("supported_event_types", pynvml.nvmlEventTypeAll))
            if wanted & ~supported:
                return NOT_SUPPORTED
            first = not es.registered.get(gpu.uuid, 0) & XID
            es.registered[gpu.uuid] = es.registered.get(gpu.uuid, 0) | wanted
            if first and wanted & XID:
                es.queue.extend((gpu, XID, int(code)) for code in gpu.desc.get("xid_events", []))
        return SUCCESS

    def _c_nvmlEventSetWait_v2(self, event_set: Any, data: Any, timeout_ms: Any) -> int:
        rc, _ = self._pre("nvmlEventSetWait_v2")
        if rc:
            return rc
        with self._lock:
            es = self._event_sets.get(_address(event_set))
            if es is None:
                return INVALID_ARGUMENT
            if not es.queue:
                return TIMEOUT
            gpu, kind, value = es.queue.popleft()
        out = deref(data)
        out.device = ctypes.cast(ctypes.c_void_p(gpu.address), pynvml.c_nvmlDevice_t)
        out.eventType, out.eventData = kind, value
        out.gpuInstanceId = out.computeInstanceId = 0xFFFFFFFF
        return SUCCESS

    def _c_nvmlEventSetFree(self, event_set: Any) -> int:
        rc, _ = self._pre("nvmlEventSetFree")
        if rc:
            return rc
        with self._lock:
            return SUCCESS if self._event_sets.pop(_address(event_set), None) is not None else INVALID_ARGUMENT
