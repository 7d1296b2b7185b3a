"""The last Xid (critical error) each GPU reported, from NVML's event API, read without blocking.

NVML has no query for "the last Xid": the driver delivers each one as an event (nvmlEventTypeXidCriticalError,
its code in eventData) to the event sets registered for that GPU. So an `XidWatch` registers each GPU it is shown
once (nvmlDeviceGetSupportedEventTypes, nvmlEventSetCreate, nvmlDeviceRegisterEvents), and `drain()` takes what is
queued with nvmlEventSetWait_v2(timeout 0), which returns TIMEOUT at once when nothing is: nothing waits. An Xid
from before the watch began is not seen (the driver keeps no history): `last(uuid)` is 0 until one arrives (as
dcgm-exporter's DCGM_FI_DEV_XID_ERRORS), and None for a GPU whose driver does not deliver Xid events (NOT_SUPPORTED)
or refuses the registration, so a missing watch is never reported as a clean GPU.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pynvml

from agent.gpu.device import Device
from agent.gpu.nvml import Nvml, NvmlError

log = logging.getLogger(__name__)
XID_EVENT = pynvml.nvmlEventTypeXidCriticalError
TIMEOUT = pynvml.NVML_ERROR_TIMEOUT
MAX_EVENTS_PER_DRAIN = 256  # a GPU storming Xids must not hold the sampler: the rest waits for the next drain


class XidWatch:
    """Xid events of the GPUs it is shown, on one NVML session (the sampler's). Thread-safe."""

    def __init__(self, nvml: Nvml) -> None:
        self.nvml = nvml
        self._lock = threading.Lock()
        self._set: Any = None
        self._last: dict[str, int] = {}          # uuid -> last Xid (0: none seen since registration)
        self._unwatched: set[str] = set()        # uuids whose Xid events NVML will not deliver

    def watch(self, device: Device, uuid: str) -> None:
        """Register `device` for Xid events (once per UUID; a refusal is remembered, not retried every second)."""
        with self._lock:
            if uuid in self._last or uuid in self._unwatched:
                return
            try:
                supported = self.nvml.call(pynvml.nvmlDeviceGetSupportedEventTypes, device.handle)
                if supported is not None and supported & XID_EVENT and self._set is None:
                    self._set = self.nvml.call(pynvml.nvmlEventSetCreate)
                if supported is None or not supported & XID_EVENT or self._set is None:
                    self._unwatched.add(uuid)
                    return
                self.nvml.call(pynvml.nvmlDeviceRegisterEvents, device.handle, XID_EVENT, self._set)
            except NvmlError as e:
                log.warning("GPU %s: Xid events not watched: %s", uuid, e)
                self._unwatched.add(uuid)
                return
            self._last[uuid] = 0

    def drain(self) -> None:
        """Take the queued events (never waits); the last Xid per GPU is kept."""
        with self._lock:
            if self._set is None:
                return
            for _ in range(MAX_EVENTS_PER_DRAIN):
                try:
                    data = self.nvml.call(pynvml.nvmlEventSetWait_v2, self._set, 0)
                except NvmlError as e:
                    if e.code != TIMEOUT:
                        log.warning("reading Xid events: %s", e)
                    return
                if data is None or not data.eventType & XID_EVENT:
                    continue
                try:
                    uuid = self.nvml.call(pynvml.nvmlDeviceGetUUID, data.device)
                except NvmlError as e:   # e.g. the GPU is lost: skip its event, keep the others and the sample
                    log.warning("Xid %s of a GPU whose UUID cannot be read: %s", int(data.eventData), e)
                    continue
                if uuid in self._last:
                    self._last[uuid] = int(data.eventData)

    def last(self, uuid: str) -> int | None:
        """The last Xid of that GPU since it was registered (0: none); None when its Xid events are not watched."""
        with self._lock:
            return self._last.get(uuid)

    def close(self) -> None:
        with self._lock:
            if self._set is not None:
                try:
                    self.nvml.call(pynvml.nvmlEventSetFree, self._set)
                except NvmlError as e:
                    log.warning("freeing the Xid event set: %s", e)
            self._set = None
            self._last.clear()
            self._unwatched.clear()
