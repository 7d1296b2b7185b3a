"""Block devices: which whole disks exist, what they are, where they sit, and their queue settings.

Enumeration: on the live host through pyudev (libudev's own view of the block subsystem); pyudev cannot be
pointed at another sysfs root (libudev fixed /sys in udev 183), so for any other root (a fixture tree, a
container's --sysfs=/host/sys) the same disks are listed from <sysfs>/block. Either way every attribute is
read by the one function below from sysfs under HostPaths, so the live host and fixture trees share the code
that matters.

kind comes from the kernel's device naming and the device path (a SATA disk is an `sd` whose path runs through
an `ataN` port, or whose SCSI vendor is "ATA"); numa_node from the PCI device of the controller, the nearest
PCI address on the device path (-1 there means "no affinity" and becomes None).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from agent.fsio import read_int, read_str
from agent.hostfs import HostPaths
from agent.inspect import parse
from agent.inspect.models import BlockDevice
from agent.inspect.registry import register

PCI_ADDRESS_RE = re.compile(r"^[0-9a-f]{4,}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_NAME_KINDS: tuple[tuple[str, str], ...] = (
    ("nvme", "nvme"), ("loop", "loop"), ("dm-", "dm"), ("md", "md"), ("nullb", "null_blk"), ("zram", "zram"),
    ("mmcblk", "mmc"), ("vd", "virtio"), ("xvd", "xen"), ("ram", "ram"),
)


def _natural_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def disk_names(paths: HostPaths) -> list[str]:
    """Whole disks (no partitions), in natural order (nvme2n1 before nvme10n1)."""
    names: list[str] | None = None
    if paths.is_live:
        names = _udev_disk_names()
    if names is None:
        root = paths.sys("block")
        names = [p.name for p in root.iterdir()] if root.is_dir() else []
    return sorted(names, key=_natural_key)


def _udev_disk_names() -> list[str] | None:
    """Disks as libudev enumerates them; None when pyudev or libudev is unusable (then sysfs is listed)."""
    try:
        import pyudev

        context = pyudev.Context()
        return [d.sys_name for d in context.list_devices(subsystem="block", DEVTYPE="disk")]
    except (ImportError, OSError):
        return None


def device_path_of(paths: HostPaths, disk: Path) -> str:
    """The disk's real path inside sysfs ('devices/pci0000:00/.../block/vda'); '' when it is not a link."""
    if not disk.is_symlink():
        return ""
    real = os.path.realpath(disk)
    root = os.path.realpath(paths.sysfs)
    if os.path.commonpath([real, root]) != root:
        return ""
    return os.path.relpath(real, root)


def kind_of(name: str, device_path: str, scsi_vendor: str | None) -> str:
    if name.startswith(("sd", "sr")):
        if re.search(r"/ata\d+/", device_path) or (scsi_vendor or "").strip() == "ATA":
            return "sata"
        if "/usb" in device_path:
            return "usb"
        return "scsi"
    for prefix, kind in _NAME_KINDS:
        if name.startswith(prefix):
            return kind
    if "/virtio" in device_path:
        return "virtio"
    return "other"


def _nearest_pci(paths: HostPaths, device_path: str) -> str | None:
    """The sysfs path of the PCI device closest to the disk on its device path."""
    parts = device_path.split("/")
    for i in range(len(parts) - 1, -1, -1):
        if PCI_ADDRESS_RE.match(parts[i]):
            return "/".join(parts[: i + 1])
    return None


def controller(paths: HostPaths, device_path: str) -> tuple[str | None, int | None]:
    """(PCI address, NUMA node) of the disk's controller.

    A multipath NVMe namespace lives under devices/virtual/nvme-subsystem: its controllers (nvmeN links in the
    subsystem directory) lead to the PCI device.
    """
    pci = _nearest_pci(paths, device_path)
    if pci is None and "/nvme-subsystem/" in device_path:
        subsystem = paths.sys(device_path).parent
        for ctrl in sorted(subsystem.glob("nvme[0-9]*")):
            pci = _nearest_pci(paths, device_path_of(paths, ctrl / "device"))
            if pci:
                break
    if pci is None:
        return None, None
    return pci.rsplit("/", 1)[-1], parse.numa_node(paths.sys(pci, "numa_node"))


def device_dir(paths: HostPaths, disk: Path, device_path: str) -> Path:
    """The disk's parent device (SCSI LUN, NVMe controller, virtio device): where model/serial/vendor live.

    sysfs links it as <disk>/device; that link points back up the disk's own path, so fixture trees leave it
    out (a link cycle stalls every tool that walks a tree) and the parent is taken from the device path.
    """
    link = disk / "device"
    if link.exists() or not device_path:
        return link
    parts = device_path.split("/")[:-1]
    if parts and parts[-1] == "block":
        parts = parts[:-1]
    return paths.sys(*parts)


def read_device(paths: HostPaths, name: str) -> BlockDevice | None:
    """One disk's facts from sysfs; None for a loop device with nothing attached (size 0, no backing file)."""
    disk = paths.sys("block", name)
    size_sectors = read_int(disk / "size")
    if name.startswith("loop") and not size_sectors and not (disk / "loop" / "backing_file").exists():
        return None
    device_path = device_path_of(paths, disk)
    queue = disk / "queue"
    scheduler, schedulers = parse.choice(queue / "scheduler")
    rotational = read_int(queue / "rotational")
    removable = read_int(disk / "removable")
    pci_address, numa_node = controller(paths, device_path)
    device = device_dir(paths, disk, device_path)
    return BlockDevice(
        name=name,
        kind=kind_of(name, device_path, read_str(device / "vendor")),
        rotational=None if rotational is None else bool(rotational),
        removable=None if removable is None else bool(removable),
        size_bytes=None if size_sectors is None else size_sectors * 512,  # `size` is in 512-byte sectors always
        numa_node=numa_node,
        model=read_str(device / "model") or read_str(device / "name") or None,  # mmc cards have a name
        serial=read_str(device / "serial") or read_str(disk / "serial") or None,
        read_ahead_kb=read_int(queue / "read_ahead_kb"),
        scheduler=scheduler,
        schedulers=schedulers,
        nr_requests=read_int(queue / "nr_requests"),
        logical_block_size=read_int(queue / "logical_block_size"),
        pci_address=pci_address,
    )


def disk_present(paths: HostPaths, name: str) -> bool:
    """The whole disk is there now: its sysfs directory exists and, for a loop device, something is attached
    (an unattached loop device keeps its directory and queue files but holds no disk)."""
    return paths.sys("block", name).is_dir() and read_device(paths, name) is not None


@register("block_devices", fallback=list)
def collect(paths: HostPaths) -> list[BlockDevice]:
    return [dev for name in disk_names(paths) if (dev := read_device(paths, name)) is not None]
