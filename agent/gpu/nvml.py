"""The one funnel for every NVML call (nvitop's idea, without its size).

Every NVML function hosttune uses goes through `Nvml.call(fn, *args)`, so errors mean the same thing everywhere:

- the library is initialised lazily, once, on first use;
- `bytes` results are decoded to `str`;
- NOT_SUPPORTED (3) and FUNCTION_NOT_FOUND (13) from a *getter* become None: "not applicable on this GPU or
  driver", a value and not an error. From a setter they raise NvmlError, because a setter that silently did
  nothing must never look like success;
- a missing library (LIBRARY_NOT_FOUND 12) or an unloaded driver (DRIVER_NOT_LOADED 9) at init means
  "no GPUs here": `available` is False and `reason` says why; nothing raises;
- every other NVML error raises NvmlError (a HostError) carrying the NVML code and the function name.

`dry_run=True` makes every setter or reset raise DryRunViolation *before* the library is reached: the read-only
mode for shared GPU machines. `forbid_mutations()` enforces the same one level lower, at the binding's C-function
lookup, for a whole process (scripts/gpu-check.sh uses it to prove nothing mutating was even looked up).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml

from agent.errors import HostError, NotApplicable
from agent.gpu.simulator.library import install, installed

NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
INVALID_ARGUMENT = pynvml.NVML_ERROR_INVALID_ARGUMENT
NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION
LIBRARY_NOT_FOUND = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
DRIVER_NOT_LOADED = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
FUNCTION_NOT_FOUND = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST

# Codes that mean "this GPU or driver does not have that", for getters.
_NOT_APPLICABLE = frozenset({NOT_SUPPORTED, FUNCTION_NOT_FOUND})
# Codes at init that mean "no usable NVIDIA GPU on this host", not "broken".
_NO_GPU_AT_INIT = {
    LIBRARY_NOT_FOUND: "NVML library not found (libnvidia-ml.so.1): no NVIDIA driver installed",
    DRIVER_NOT_LOADED: "NVIDIA driver not loaded",
}

# C functions that change GPU state. Names as the C library (and pynvml's Python wrappers) spell them.
MUTATING_FUNCTIONS: frozenset[str] = frozenset({
    "nvmlDeviceSetGpuLockedClocks",
    "nvmlDeviceResetGpuLockedClocks",
    "nvmlDeviceSetMemoryLockedClocks",
    "nvmlDeviceResetMemoryLockedClocks",
    "nvmlDeviceSetApplicationsClocks",
    "nvmlDeviceResetApplicationsClocks",
    "nvmlDeviceSetPowerManagementLimit",
    "nvmlDeviceSetPowerManagementLimit_v2",
    "nvmlDeviceSetPersistenceMode",
    "nvmlDeviceSetComputeMode",
    "nvmlDeviceSetEccMode",
    "nvmlDeviceClearEccErrorCounts",
    "nvmlDeviceSetGpuOperationMode",
    "nvmlDeviceSetAutoBoostedClocksEnabled",
    "nvmlDeviceSetDefaultAutoBoostedClocksEnabled",
    "nvmlDeviceSetMigMode",
    "nvmlDeviceSetDriverModel",
    "nvmlDeviceSetClockOffsets",
    "nvmlDeviceSetPowerMizerMode_v1",
    "nvmlDeviceSetFanSpeed_v2",
    "nvmlDeviceSetDefaultFanSpeed_v2",
    "nvmlDeviceSetAccountingMode",
    "nvmlDeviceClearAccountingPids",
    "nvmlDeviceSetAPIRestriction",
    "nvmlDeviceModifyDrainState",
    "nvmlDeviceRemoveGpu_v2",
    "nvmlDeviceResetNvLinkErrorCounters",
    "nvmlDeviceSetNvLinkUtilizationControl",
    "nvmlDeviceResetNvLinkUtilizationCounter",
    "nvmlDeviceCreateGpuInstance",
    "nvmlDeviceCreateGpuInstanceWithPlacement",
    "nvmlUnitSetLedState",
})
# Anything spelled like a mutation counts as one even if it is not in the list above (new NVML versions).
_MUTATING_PREFIXES = ("nvmlDeviceSet", "nvmlDeviceReset", "nvmlDeviceClear", "nvmlDeviceCreate", "nvmlDeviceModify",
                      "nvmlDeviceRemove", "nvmlUnitSet", "nvmlSystemSet", "nvmlGpuInstanceCreate",
                      "nvmlGpuInstanceDestroy", "nvmlComputeInstanceDestroy", "nvmlVgpuInstanceSet")


def is_mutating(name: str) -> bool:
    """True for an NVML function that changes GPU state (setters, resets, clears, creates)."""
    return name in MUTATING_FUNCTIONS or name.startswith(_MUTATING_PREFIXES)


class NvmlError(HostError):
    """NVML refused or failed a call. `code` is the nvmlReturn_t value, `function` the NVML function name."""

    def __init__(self, function: str, code: int, text: str) -> None:
        super().__init__(f"NVML {function}: {text} (error {code})")
        self.function = function
        self.code = code
        self.text = text

    @property
    def not_supported(self) -> bool:
        return self.code in _NOT_APPLICABLE

    @property
    def no_permission(self) -> bool:
        return self.code == NO_PERMISSION

    @property
    def gpu_lost(self) -> bool:
        return self.code == GPU_IS_LOST


class DryRunViolation(HostError):
    """A setter or reset was about to reach NVML in read-only (dry-run) mode. Always a bug in the caller."""

    def __init__(self, function: str) -> None:
        super().__init__(f"NVML {function}: refused in dry-run (read-only) mode; nothing was sent to the GPU")
        self.function = function


class NvmlUnavailable(NotApplicable):
    """An NVML call on a host without usable NVML (no library, no driver)."""


def _error_text(e: pynvml.NVMLError) -> str:
    try:
        return str(e)
    except Exception:  # str() may call back into the library; never let that hide the code
        return f"NVML error {e.value}"


def _decode(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def function_name(fn: Callable[..., Any] | str) -> str:
    """The NVML name of a pynvml wrapper (its __name__; pynvml keeps it through its decorators)."""
    return fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))


class Nvml:
    """A lazily initialised NVML session. Create with open_nvml() and hand it to every inspector, tuner and
    sampler that needs it: there is no process-wide session to reach for."""

    def __init__(self, *, dry_run: bool = False, simulated: bool = False) -> None:
        self.dry_run = dry_run
        self.simulated = simulated
        self._lock = threading.Lock()
        self._initialized = False
        self._available: bool | None = None
        self._reason: str | None = None

    def _ensure_init(self) -> None:
        if self._available is not None:
            return
        with self._lock:
            if self._available is not None:
                return
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as e:
                if e.value in _NO_GPU_AT_INIT:
                    self._available, self._reason = False, _NO_GPU_AT_INIT[e.value]
                    return
                raise NvmlError("nvmlInit", e.value, _error_text(e)) from None
            self._initialized = True
            self._available = True

    @property
    def available(self) -> bool:
        """False means "no GPUs here" (see reason), never a failure. Initialises NVML on first use."""
        self._ensure_init()
        return bool(self._available)

    @property
    def reason(self) -> str | None:
        self._ensure_init()
        return self._reason

    def call(self, fn: Callable[..., Any] | str, *args: Any) -> Any:
        """Call one pynvml function (the function object or its name) through the funnel (see module doc)."""
        name = function_name(fn)
        mutating = is_mutating(name)
        if mutating and self.dry_run:
            raise DryRunViolation(name)
        func: Callable[..., Any] = getattr(pynvml, fn) if isinstance(fn, str) else fn
        self._ensure_init()
        if not self._available:
            raise NvmlUnavailable(f"NVML {name}: NVML is not available: {self._reason}")
        try:
            return _decode(func(*args))
        except pynvml.NVMLError as e:
            if e.value in _NOT_APPLICABLE and not mutating:
                return None
            raise NvmlError(name, e.value, _error_text(e)) from None

    def device_count(self) -> int:
        """Number of GPUs NVML sees; 0 without NVML."""
        if not self.available:
            return 0
        return int(self.call(pynvml.nvmlDeviceGetCount) or 0)

    def close(self) -> None:
        """Shut NVML down if this session initialised it (pynvml reference-counts init/shutdown)."""
        with self._lock:
            if self._initialized:
                with contextlib.suppress(pynvml.NVMLError):
                    pynvml.nvmlShutdown()
            self._initialized = False
            self._available = None
            self._reason = None

    def __enter__(self) -> Nvml:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ENV_SIM = "HOSTTUNE_NVML_SIM"
ENV_DRY_RUN = "HOSTTUNE_NVML_DRY_RUN"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def open_nvml(sim: Path | str | None = None, *, dry_run: bool = False) -> Nvml:
    """An Nvml session on the real library, or on the C-level simulator described by the JSON file `sim`.

    Without `sim`, HOSTTUNE_NVML_SIM names the description (the same variable --nvml-sim defaults to), so every
    part of one process (inspection, the GPU tuner, telemetry) sees the same GPUs. HOSTTUNE_NVML_DRY_RUN=1 makes
    every session read-only whatever the caller asked. Installing the simulator replaces the binding's library
    for this whole process (pynvml is process-global); a simulator already installed from the same file is kept,
    so its in-memory state survives a second open.
    """
    dry_run = dry_run or _env_flag(ENV_DRY_RUN)
    if sim is None and os.environ.get(ENV_SIM):
        sim = os.environ[ENV_SIM]
    if sim is not None:
        current = installed()
        path = Path(sim)
        if current is None or current.source is None or current.source.resolve() != path.resolve():
            install(path)
        return Nvml(dry_run=dry_run, simulated=True)
    return Nvml(dry_run=dry_run)


class MutationGuard:
    """Refuses, at pynvml's C-function lookup, to hand out any mutating NVML function, and records the attempts.

    This sits below the funnel: even code that calls pynvml directly cannot reach a setter while it is active.
    """

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._original: Callable[[str], Any] | None = None

    def _lookup(self, name: str) -> Any:
        if is_mutating(name):
            self.attempts.append(name)
            raise DryRunViolation(name)
        assert self._original is not None
        return self._original(name)

    def install(self) -> None:
        self._original = pynvml._nvmlGetFunctionPointer
        pynvml._nvmlGetFunctionPointer = self._lookup

    def uninstall(self) -> None:
        if self._original is not None and pynvml._nvmlGetFunctionPointer == self._lookup:
            pynvml._nvmlGetFunctionPointer = self._original
        self._original = None


@contextlib.contextmanager
def forbid_mutations() -> Iterator[MutationGuard]:
    """Within this block no mutating NVML function can be looked up (see MutationGuard)."""
    guard = MutationGuard()
    guard.install()
    try:
        yield guard
    finally:
        guard.uninstall()
