"""GPU tuner: SM and memory locked clocks, power limit and persistence mode, per GPU, through NVML.

Policy (`gpu:`, a list; a later entry wins for the same GPU and setting):
  select               {index}, {uuid}, {name: glob}, or {all: true} (the default); several keys must all match
  locked_clocks        {min_mhz, max_mhz}, "max" (lock at the highest SM clock), "base" (NVML's TDP base clock),
                       or "N%" of the highest SM clock (snapped down to a clock the GPU supports)
  memory_locked_clocks the same for the memory clock (no "base"; needs Ampere or newer)
  power_limit_w        watts, or "N%" of the default limit; must lie within the GPU's power limit constraints
  persistence_mode     true / false

Plan validates every value against what NVML reports for that GPU: a value outside the supported clocks or power
constraints is bad input (InputError naming the policy field); a setting the GPU or driver does not offer is
`unsupported` with NVML's reason.

NVML cannot read back a locked clock range, so what this tuner sets is recorded twice: in the engine's journal
(what revert needs: the original, undone with the reset calls) and in a small ledger under the host's /run
(rootfs/run/hosttune/gpu-locks-<boot id>.json) that plan and verify read. A reboot clears every lock, and the
ledger's name carries the kernel's boot id, so plan never counts a lock recorded before a reboot.
A lock someone else sets or resets behind hosttune's back is invisible to NVML and so to verify.

Power limits are set with the v1 setter and read back (nvidia-ml-py 13.615.71's v2 wrapper reports success even
when the library refused). NO_PERMISSION and GPU_IS_LOST fail the write with a clear message, and the engine rolls
the transaction back. When the NVML session is read-only (HOSTTUNE_NVML_DRY_RUN=1, the mode for shared GPU
machines) apply and restore refuse before anything is journaled or sent to the GPU.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from agent.errors import HostError, InputError, WriteFailed
from agent.gpu.device import ARCH_AMPERE, ARCH_VOLTA, BASE_CLOCK, Device
from agent.gpu.ledger import PENDING, ledger_path, read_ledger, write_ledger
from agent.gpu.nvml import Nvml, NvmlError, open_nvml
from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.policy.model import ClockRange, GpuSelect, Policy
from agent.tunable.change import Change
from agent.tunable.tuner import Tuner
from agent.tuners.registration import register

if TYPE_CHECKING:
    from agent.tunable.record import Record
    from agent.tunable.writer import Writer as HostWriter

SETTINGS = ("locked_clocks", "memory_locked_clocks", "power_limit_w", "persistence_mode")
LOCKS = ("locked_clocks", "memory_locked_clocks")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_RANGE = re.compile(r"^(\d+)-(\d+)$")


# --- what NVML says about one GPU, for planning -------------------------------------------------------------


@dataclass
class GpuView:
    index: int
    uuid: str
    name: str
    arch: int | None
    sm_mhz: int | None
    max_sm_mhz: int | None
    max_mem_mhz: int | None
    graphics_clocks: list[int] | None      # every supported SM clock (all memory clocks), descending
    memory_clocks: list[int] | None
    power_limit_mw: int | None
    power_default_mw: int | None
    power_range_mw: tuple[int, int] | None
    persistence: bool | None


def view_gpu(nvml: Nvml, index: int) -> GpuView:
    """What planning needs of one GPU, read once through the device reader."""
    device = Device.open(nvml, index)
    supported = device.supported_clocks()
    memory = sorted(supported, reverse=True) if supported else None
    graphics = sorted({mhz for clocks in (supported or {}).values() for mhz in clocks or []}, reverse=True)
    return GpuView(
        index=index, uuid=device.uuid(), name=device.name(), arch=device.architecture(),
        sm_mhz=device.clock("sm"), max_sm_mhz=device.max_clock("sm"), max_mem_mhz=device.max_clock("mem"),
        graphics_clocks=graphics or None, memory_clocks=memory,
        power_limit_mw=device.power_limit_mw(), power_default_mw=device.default_power_limit_mw(),
        power_range_mw=device.power_limit_range_mw(), persistence=device.persistence(),
    )


def selected(select: GpuSelect, gpu: GpuView) -> bool:
    """All the keys given must match; {all: true} or no key at all selects every GPU."""
    checks = []
    if select.index is not None:
        checks.append(gpu.index == select.index)
    if select.uuid is not None:
        checks.append(gpu.uuid.lower() == select.uuid.lower())
    if select.name is not None:
        checks.append(fnmatch.fnmatchcase(gpu.name.lower(), select.name.lower()))
    return all(checks)


def watts(mw: int | None) -> str | None:
    if mw is None:
        return None
    return f"{mw // 1000} W" if mw % 1000 == 0 else f"{mw / 1000:g} W"  # no float overflow on a huge int


def _percent(text: str, where: str) -> float:
    m = _PERCENT.match(text)
    if not m or not 0 < float(m.group(1)) <= 100:
        raise InputError(f"expected watts or a percentage such as '90%', not {text!r}"
                         if where.endswith("power_limit_w") else
                         f"expected max, base, a percentage such as '90%' or {{min_mhz, max_mhz}}, not {text!r}",
                         field=where)
    return float(m.group(1)) / 100


# --- planning each setting -----------------------------------------------------------------------------------


@dataclass
class Planned:
    value: str | None = None            # what apply sets and verify expects
    unsupported: str | None = None      # why NVML cannot do it on this GPU


def _plan_lock(setting: str, spec: Any, gpu: GpuView, where: str) -> Planned:
    memory = setting == "memory_locked_clocks"
    arch_needed, arch_name = (ARCH_AMPERE, "Ampere") if memory else (ARCH_VOLTA, "Volta")
    if gpu.arch is not None and gpu.arch < arch_needed:
        return Planned(unsupported=f"locked {'memory' if memory else 'SM'} clocks need {arch_name} or newer")
    clocks = gpu.memory_clocks if memory else gpu.graphics_clocks
    top = (gpu.max_mem_mhz if memory else gpu.max_sm_mhz) or (clocks[0] if clocks else None)
    if not clocks or top is None:
        what = "memory" if memory else "graphics"
        return Planned(unsupported=f"NVML: supported {what} clocks: Not Supported on this GPU")
    lowest = min(clocks)
    if isinstance(spec, ClockRange):
        if spec.min_mhz < lowest or spec.max_mhz > top:
            raise InputError(f"{spec.min_mhz}-{spec.max_mhz} MHz is outside what GPU {gpu.index} ({gpu.name}) "
                             f"supports: {lowest}-{top} MHz", field=where)
        return Planned(value=f"{spec.min_mhz}-{spec.max_mhz}")
    text = str(spec).strip()
    if text == "max":
        return Planned(value=f"{top}-{top}")
    if text == "base":
        if memory:
            raise InputError("'base' applies to SM clocks only; give max, a percentage or {min_mhz, max_mhz}",
                             field=where)
        return Planned(value="base")
    target = _percent(text, where) * top
    fits = [c for c in clocks if c <= target]
    mhz = max(fits) if fits else lowest
    return Planned(value=f"{mhz}-{mhz}")


def _plan_power(spec: Any, gpu: GpuView, where: str) -> Planned:
    if gpu.power_range_mw is None or gpu.power_limit_mw is None:
        return Planned(unsupported="NVML: power limit constraints: Not Supported on this GPU")
    if isinstance(spec, bool):
        raise InputError("expected watts or a percentage such as '90%'", field=where)
    if isinstance(spec, int):
        mw = spec * 1000
    else:
        share = _percent(str(spec), where)
        if gpu.power_default_mw is None:
            return Planned(unsupported="NVML: default power limit: Not Supported (a percentage needs it)")
        mw = round(gpu.power_default_mw * share / 1000) * 1000
    lo, hi = gpu.power_range_mw
    if not lo <= mw <= hi:
        raise InputError(f"{watts(mw)} is outside GPU {gpu.index} ({gpu.name})'s power limit range "
                         f"{watts(lo)}-{watts(hi)}", field=where)
    return Planned(value=watts(mw))


def _plan_persistence(spec: Any, gpu: GpuView) -> Planned:
    if gpu.persistence is None:
        return Planned(unsupported="NVML: persistence mode: Not Supported on this GPU or OS")
    return Planned(value="enabled" if spec else "disabled")


def _desired_text(spec: Any) -> str:
    if isinstance(spec, ClockRange):
        return f"{spec.min_mhz}-{spec.max_mhz}"
    if isinstance(spec, bool):
        return "enabled" if spec else "disabled"
    if isinstance(spec, int):
        return f"{spec} W"
    return str(spec)


def parse_target(target: str) -> tuple[int, str]:
    """'gpu3/power_limit_w' -> (3, 'power_limit_w')."""
    gpu, _, setting = target.partition("/")
    if not gpu.startswith("gpu") or not gpu[3:].isdigit() or setting not in SETTINGS:
        raise HostError(f"not a GPU tuner target: {target!r}")
    return int(gpu[3:]), setting


def _nvml_failure(target: str, e: NvmlError) -> WriteFailed:
    hint = ""
    if e.no_permission:
        hint = ": changing GPU clocks, power or persistence needs root"
    elif e.gpu_lost:
        hint = ": the GPU fell off the bus (check dmesg and nvidia-smi; it needs a reset or reboot)"
    elif e.not_supported:
        hint = ": this GPU or driver does not support it"
    return WriteFailed(target, f"{e.message}{hint}")


@register
class GpuTuner(Tuner):
    name = "gpu"
    order = 70
    domains: ClassVar[tuple[str, ...]] = ("gpu", "nvidia")
    sections: ClassVar[tuple[str, ...]] = ("gpu",)

    def __init__(self, nvml: Nvml | None = None) -> None:
        """`nvml`: the session to plan and apply through, handed over by whoever runs the operation (the engine
        passes its caller's: the daemon's, the CLI's --nvml-sim one). Without one the tuner opens its own on
        first use (open_nvml: the real library, or the simulator HOSTTUNE_NVML_SIM names)."""
        self._nvml = nvml

    @classmethod
    def build(cls, nvml: Nvml | None) -> Self:
        return cls(nvml)

    @property
    def nvml(self) -> Nvml:
        if self._nvml is None:
            self._nvml = open_nvml()
        return self._nvml

    # -- plan --------------------------------------------------------------------------------------------------

    def plan(self, policy: Policy, facts: HostFacts | None, paths: HostPaths) -> list[Change]:
        if not policy.gpu:
            return []
        nvml = self.nvml
        if not nvml.available:
            return [Change(tuner=self.name, target="gpu", action="not_applicable",
                           reason=f"no NVIDIA GPU: {nvml.reason}", field="gpu")]
        gpus = [view_gpu(nvml, i) for i in range(nvml.device_count())]
        chosen: dict[tuple[int, str], tuple[int, Any]] = {}   # (gpu index, setting) -> (spec index, value)
        changes: list[Change] = []
        for si, spec in enumerate(policy.gpu):
            matched = [g for g in gpus if selected(spec.select, g)]
            if not matched:
                changes.append(Change(tuner=self.name, target=f"select.{si}", action="not_applicable",
                                      reason=f"no GPU matches ({len(gpus)} GPUs here)", field=f"gpu.{si}.select"))
            for setting in SETTINGS:
                value = getattr(spec, setting)
                if value is not None:
                    for g in matched:
                        chosen[(g.index, setting)] = (si, value)
        ledger = ledger_path(paths)
        recorded = read_ledger(ledger)
        for (index, setting), (si, value) in sorted(chosen.items(), key=lambda kv: (kv[0][0],
                                                                                    SETTINGS.index(kv[0][1]))):
            changes.append(self._plan_one(gpus[index], setting, value, f"gpu.{si}.{setting}", ledger,
                                          recorded.get(gpus[index].uuid, {})))
        return changes

    def _plan_one(self, gpu: GpuView, setting: str, spec: Any, where: str, ledger: Path,
                  recorded: dict[str, str]) -> Change:
        target = f"gpu{gpu.index}/{setting}"
        current: str | None
        if setting in LOCKS:
            planned = _plan_lock(setting, spec, gpu, where)
            current = recorded.get(setting)
            shown = current
            if current is None:
                shown = f"not recorded (SM {gpu.sm_mhz} MHz now)" if setting == "locked_clocks" else "not recorded"
        elif setting == "power_limit_w":
            planned = _plan_power(spec, gpu, where)
            current = shown = watts(gpu.power_limit_mw)
        else:
            planned = _plan_persistence(spec, gpu)
            current = shown = _enabled(gpu.persistence)
        common: dict[str, Any] = dict(tuner=self.name, target=target, current=shown, desired=_desired_text(spec),
                                      field=where, path=str(ledger) if setting in LOCKS else None)
        if planned.unsupported is not None:
            return Change(**common, action="unsupported", reason=planned.unsupported)
        ok = current is not None and current == planned.value
        if ok:
            reason = "already set"
        elif setting in LOCKS:
            reason = f"{gpu.name}; NVML cannot read a lock back, hosttune records what it sets"
        else:
            reason = gpu.name
        return Change(**common, value=planned.value, action="ok" if ok else "change", reason=reason)

    # -- apply / read / restore ------------------------------------------------------------------------------

    def _refuse_if_read_only(self, target: str) -> None:
        if self.nvml.dry_run:
            raise HostError(f"{target}: NVML is read-only in this process (dry-run, HOSTTUNE_NVML_DRY_RUN): "
                            f"GPU settings are never changed here")

    def _device(self, target: str, uuid: str | None = None) -> tuple[Device, str, str]:
        """The GPU a target names (by UUID when the journal recorded one), its UUID and the setting."""
        index, setting = parse_target(target)
        try:
            device = Device.open(self.nvml, index, uuid)
            return device, uuid or device.uuid(), setting
        except NvmlError as e:
            raise _nvml_failure(target, e) from e

    @staticmethod
    def _current(device: Device, setting: str, ledger: Path | None, uuid: str) -> str | None:
        if setting == "power_limit_w":
            return watts(device.power_limit_mw())
        if setting == "persistence_mode":
            return _enabled(device.persistence())
        if ledger is None:
            return None
        return read_ledger(ledger).get(uuid, {}).get(setting)

    def _set(self, device: Device, setting: str, value: str | None, target: str, ledger: Path | None,
             uuid: str) -> None:
        """Make the GPU hold `value` (None for a lock: reset it), read back what NVML can, record locks."""
        try:
            if setting == "power_limit_w":
                mw = _parse_watts(value, target)
                device.set_power_limit_mw(mw)
                now = device.power_limit_mw()
                if now != mw:
                    raise WriteFailed(target, f"set {watts(mw)} but NVML reports {watts(now)}")
            elif setting == "persistence_mode":
                device.set_persistence(value == "enabled")
                if device.persistence() != (value == "enabled"):
                    raise WriteFailed(target, f"set persistence {value} but NVML reports otherwise")
            else:
                self._set_lock(device, setting, value, target, ledger, uuid)
        except NvmlError as e:
            raise _nvml_failure(target, e) from e

    @staticmethod
    def _set_lock(device: Device, setting: str, value: str | None, target: str, ledger: Path | None,
                  uuid: str) -> None:
        """Lock (or reset, for None) and keep the ledger honest around the call: it says "pending" while the
        call is in flight, so a process killed right after NVML locked still leaves a trace for revert, and
        it goes back to what it said before when NVML refuses, so a rollback knows nothing was changed."""
        memory = setting == "memory_locked_clocks"
        before = None if ledger is None else read_ledger(ledger).get(uuid, {}).get(setting)
        if ledger is not None:
            write_ledger(ledger, uuid, setting, f"{PENDING}{value or 'reset'}")
        try:
            if value is None:
                device.reset_locked_clocks(memory)
            else:
                device.lock_clocks(memory, *_parse_lock(value, target))
        except BaseException:
            if ledger is not None:
                write_ledger(ledger, uuid, setting, before)
            raise
        if ledger is not None:
            write_ledger(ledger, uuid, setting, value)

    def apply(self, change: Change, writer: HostWriter) -> None:
        self._refuse_if_read_only(change.target)
        device, uuid, setting = self._device(change.target)
        ledger = Path(change.path) if change.path else None
        original = self._current(device, setting, ledger, uuid)
        writer.write_custom(
            tuner=self.name, target=change.target, original=original, desired=change.desired,
            do=lambda: self._set(device, setting, change.value, change.target, ledger, uuid),
            extra={"uuid": uuid, "index": device.index, "setting": setting,
                   "ledger": str(ledger) if ledger else None})

    def restore(self, record: Record, writer: HostWriter) -> None:
        self._refuse_if_read_only(record.target)
        ledger = Path(record.extra["ledger"]) if record.extra.get("ledger") else None
        device, uuid, setting = self._device(record.target, record.extra.get("uuid"))
        # No write when the GPU already holds the original. For a lock that is what the ledger says; only a
        # rollback trusts it (a failed lock call left no trace), revert resets regardless: it is idempotent, and
        # a ledger lost without a reboot must not leave a lock behind.
        txn = writer.journal.open_txn
        trust = setting not in LOCKS or (txn is not None and txn.kind == "apply")
        if trust and self._current(device, setting, ledger, uuid) == record.original_raw:
            return
        # A lock's original is what hosttune had recorded before (a range) or nothing (None): reset.
        writer.restore_custom(record, lambda: self._set(device, setting, record.original_raw, record.target,
                                                        ledger, uuid))

    def read(self, change: Change) -> str | None:
        try:
            device, uuid, setting = self._device(change.target)
        except WriteFailed:
            return None
        return self._current(device, setting, Path(change.path) if change.path else None, uuid)


def _enabled(flag: bool | None) -> str | None:
    return None if flag is None else "enabled" if flag else "disabled"


def _parse_watts(value: str | None, target: str) -> int:
    try:
        return round(float((value or "").removesuffix("W").strip()) * 1000)
    except ValueError:
        raise HostError(f"{target}: not a power value: {value!r}") from None


def _parse_lock(value: str, target: str) -> tuple[int, int]:
    if value == "base":
        return BASE_CLOCK, BASE_CLOCK
    m = _RANGE.match(value)
    if not m:
        raise HostError(f"{target}: not a clock range: {value!r}")
    return int(m.group(1)), int(m.group(2))
