"""The simulator's GPU description: return codes, ctypes helpers, one simulated GPU, the JSON loader."""

from __future__ import annotations

import ctypes
import json
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
TIMEOUT = pynvml.NVML_ERROR_TIMEOUT

CLOCK_LIMIT_TDP = pynvml.NVML_CLOCK_LIMIT_ID_TDP
CLOCK_LIMIT_UNLIMITED = pynvml.NVML_CLOCK_LIMIT_ID_UNLIMITED

ERROR_STRINGS = {
    SUCCESS: "Success", UNINITIALIZED: "Uninitialized", INVALID_ARGUMENT: "Invalid Argument",
    NOT_SUPPORTED: "Not Supported", NO_PERMISSION: "Insufficient Permissions", NOT_FOUND: "Not Found",
    INSUFFICIENT_SIZE: "Insufficient Size", DRIVER_NOT_LOADED: "Driver Not Loaded",
    FUNCTION_NOT_FOUND: "Function Not Found", GPU_IS_LOST: "GPU is lost",
    ARGUMENT_VERSION_MISMATCH: "Argument version mismatch", TIMEOUT: "Timeout",
}
MUTABLE_KEYS = ("gpu_locked_clocks", "memory_locked_clocks", "power_limit_mw", "persistence_mode", "compute_mode")
CLOCK_KEYS = {pynvml.NVML_CLOCK_GRAPHICS: "graphics_mhz", pynvml.NVML_CLOCK_SM: "sm_mhz",
               pynvml.NVML_CLOCK_MEM: "mem_mhz", pynvml.NVML_CLOCK_VIDEO: "video_mhz"}


def deref(arg: Any) -> Any:
    """The object behind a byref() out-pointer (or the object itself when the binding passed it directly)."""
    return getattr(arg, "_obj", arg)


def scalar(arg: Any) -> Any:
    """A by-value argument: ctypes scalars carry .value, plain ints pass through."""
    return arg.value if hasattr(arg, "value") else arg


def fill_str(buf: Any, size: Any, text: str) -> int:
    data = text.encode()
    if len(data) + 1 > int(scalar(size)):
        return INSUFFICIENT_SIZE
    buf.value = data
    return SUCCESS


def expand_clocks(spec: Any, where: str) -> list[int]:
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
        self.graphics_clocks = {int(mem): expand_clocks(spec, f"{where}.supported_graphics_clocks_mhz.{mem}")
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


def canonical_bus_id(bus_id: str) -> str:
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

