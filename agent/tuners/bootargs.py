"""Kernel command line tuner: advice only. Boot parameters (hugepages=, isolcpus=, nohz_full=, ...) take effect
at the next boot, so they are planned as `change` with reboot_required and NEVER applied: editing the boot loader
of a production host is the operator's decision. `current` comes from the running kernel's /proc/cmdline.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agent.fsio import read_str
from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.policy.model import Policy
from agent.tunable.change import Change
from agent.tunable.tuner import Tuner
from agent.tuners.registration import register

if TYPE_CHECKING:
    from agent.tunable.writer import Writer

ADVICE = "reboot required: add to the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub), then reboot"
ABSENT = "(absent)"


def parse_cmdline(text: str | None) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for word in (text or "").split():
        key, sep, value = word.partition("=")
        params[key] = value if sep else None
    return params


def show(key: str, value: str | None) -> str:
    return key if value is None else f"{key}={value}"


@register
class BootargsTuner(Tuner):
    name = "bootargs"
    order = 90
    domains = ("bootargs", "cmdline", "bootloader")
    sections = ("kernel_cmdline",)

    def plan(self, policy: Policy, facts: HostFacts | None, paths: HostPaths) -> list[Change]:
        cmdline = paths.proc("cmdline")
        running = parse_cmdline(read_str(cmdline))
        changes = []
        for key, value in policy.kernel_cmdline.items():
            current = show(key, running[key]) if key in running else ABSENT
            wanted = show(key, value)
            ok = current == wanted
            changes.append(Change(tuner=self.name, target=f"cmdline/{key}", current=current, desired=wanted,
                                  action="ok" if ok else "change", reason="in the running kernel" if ok else ADVICE,
                                  field=f"kernel_cmdline.{key}", reboot_required=not ok, path=str(cmdline),
                                  value=wanted))
        return changes

    def read(self, change: Change) -> str | None:
        key = change.target.split("/", 1)[1]
        running = parse_cmdline(read_str(Path(change.path))) if change.path else {}
        return show(key, running[key]) if key in running else ABSENT

    def apply(self, change: Change, writer: Writer) -> None:
        raise RuntimeError("kernel command line items are advice; the engine never applies them")
