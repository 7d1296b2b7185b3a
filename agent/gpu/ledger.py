"""The GPU tuner's lock ledger: what hosttune locked, since NVML cannot read a locked clock range back.

rootfs/run/hosttune/gpu-locks-<boot id>.json maps a GPU's UUID to {setting: value}. A reboot clears every lock,
and the ledger's name carries the kernel's boot id, so a lock recorded before a reboot is never counted. A value
"pending:<value>" marks a lock call in flight (see agent.tuners.gpu).
"""

from __future__ import annotations

from pathlib import Path

from agent.fsio import atomic_write_json, load_json, read_str
from agent.hostfs import HostPaths

LEDGER_DIR = "run/hosttune"
PENDING = "pending:"


def ledger_path(paths: HostPaths) -> Path:
    """rootfs/run/hosttune/gpu-locks-<boot id>.json: a reboot (which clears every lock) starts a new ledger."""
    boot = read_str(paths.proc("sys/kernel/random/boot_id")) or "unknown-boot"
    return paths.root(LEDGER_DIR, f"gpu-locks-{boot}.json")


def read_ledger(ledger: Path) -> dict[str, dict[str, str]]:
    """uuid -> {setting: value} that hosttune locked during this boot."""
    data = load_json(ledger)
    locks = data.get("locks") if isinstance(data, dict) else None
    return locks if isinstance(locks, dict) else {}


def write_ledger(ledger: Path, uuid: str, setting: str, value: str | None) -> None:
    """Record (or, with None, forget) a lock; ledgers of earlier boots are removed on the way, and so is this
    boot's once it holds no lock."""
    locks = read_ledger(ledger)
    entry = dict(locks.get(uuid, {}))
    if value is None:
        entry.pop(setting, None)
    else:
        entry[setting] = value
    if entry:
        locks[uuid] = entry
    else:
        locks.pop(uuid, None)
    if locks:
        atomic_write_json(ledger, {"locks": locks}, mode=0o644)
    else:  # the last lock undone: no file left behind, so revert leaves the host's /run as it found it
        ledger.unlink(missing_ok=True)
    for old in ledger.parent.glob("gpu-locks-*.json"):
        if old != ledger:
            old.unlink(missing_ok=True)
