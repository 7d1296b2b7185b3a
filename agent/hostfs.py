"""HostPaths: the roots of the host's filesystems. The ONLY module in agent/ that names /proc or /sys.

Every inspector and tuner takes a HostPaths, so the same code reads the live host, a container's view of the
host (--rootfs=/host), or a fixture tree in tests (node_exporter's --path.procfs/--path.sysfs idea).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import InputError

DEFAULT_PROCFS = "/proc"
DEFAULT_SYSFS = "/sys"
DEFAULT_ROOTFS = "/"

ENV_PROCFS = "HOSTTUNE_PROCFS"
ENV_SYSFS = "HOSTTUNE_SYSFS"
ENV_ROOTFS = "HOSTTUNE_ROOTFS"


@dataclass(frozen=True)
class HostPaths:
    """Roots of procfs, sysfs and the root filesystem; udev data and /dev default to places under rootfs."""

    procfs: Path = Path(DEFAULT_PROCFS)
    sysfs: Path = Path(DEFAULT_SYSFS)
    rootfs: Path = Path(DEFAULT_ROOTFS)
    udev_data: Path = field(default=Path())
    dev: Path = field(default=Path())

    def __post_init__(self) -> None:
        for name in ("procfs", "sysfs", "rootfs"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if self.udev_data == Path():
            object.__setattr__(self, "udev_data", self.rootfs / "run/udev/data")
        if self.dev == Path():
            object.__setattr__(self, "dev", self.rootfs / "dev")

    @classmethod
    def from_options(cls, procfs: str | None = None, sysfs: str | None = None, rootfs: str | None = None,
                     env: Mapping[str, str] | None = None) -> HostPaths:
        """Options win over the environment, which wins over the live host's defaults."""
        env = os.environ if env is None else env
        return cls(
            procfs=Path(procfs or env.get(ENV_PROCFS) or DEFAULT_PROCFS),
            sysfs=Path(sysfs or env.get(ENV_SYSFS) or DEFAULT_SYSFS),
            rootfs=Path(rootfs or env.get(ENV_ROOTFS) or DEFAULT_ROOTFS),
        )

    @classmethod
    def live(cls) -> HostPaths:
        return cls()

    @property
    def is_live(self) -> bool:
        """True when these roots are the running kernel's own (writes reach the real host)."""
        return self.procfs == Path(DEFAULT_PROCFS) and self.sysfs == Path(DEFAULT_SYSFS)

    def check(self) -> HostPaths:
        """Raise InputError naming the first root that is not a directory."""
        for name in ("procfs", "sysfs", "rootfs"):
            root: Path = getattr(self, name)
            if not root.is_dir():
                raise InputError(f"{name} root is not a directory", path=root)
        return self

    def proc(self, *parts: str) -> Path:
        return self.procfs.joinpath(*parts)

    def sys(self, *parts: str) -> Path:
        return self.sysfs.joinpath(*parts)

    def root(self, *parts: str) -> Path:
        return self.rootfs.joinpath(*(p.lstrip("/") for p in parts))

    def sysctl(self, key: str) -> Path:
        """Path of a sysctl key (dots or slashes) under procfs/sys; key validation is the sysctl tuner's job."""
        return self.procfs / "sys" / key.replace(".", "/")

    def as_dict(self) -> dict[str, str]:
        return {"procfs": str(self.procfs), "sysfs": str(self.sysfs), "rootfs": str(self.rootfs),
                "udev_data": str(self.udev_data), "dev": str(self.dev)}
