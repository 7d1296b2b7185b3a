"""Option groups several commands share, added as parent parsers: the host roots and the state dir."""

from __future__ import annotations

import argparse
import os


def host_root_options() -> argparse.ArgumentParser:
    """Options shared by every command that touches the host; add as a parent parser."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("host roots")
    g.add_argument("--procfs", metavar="DIR", help="procfs root (env HOSTTUNE_PROCFS, default /proc)")
    g.add_argument("--sysfs", metavar="DIR", help="sysfs root (env HOSTTUNE_SYSFS, default /sys)")
    g.add_argument("--rootfs", metavar="DIR", help="root filesystem (env HOSTTUNE_ROOTFS, default /)")
    g.add_argument("--nvml-sim", metavar="FILE", default=os.environ.get("HOSTTUNE_NVML_SIM"),
                   help="simulate NVML from a GPU description (fixture hosts, offline planning; "
                        "env HOSTTUNE_NVML_SIM)")
    return common


def state_dir_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", metavar="DIR",
                        default=os.environ.get("HOSTTUNE_STATE_DIR", "/var/lib/hosttune"),
                        help="journal and state (env HOSTTUNE_STATE_DIR, default /var/lib/hosttune)")
    return common
