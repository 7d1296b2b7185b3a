"""Block device tuner: queue read_ahead_kb, scheduler and nr_requests, optionally kept by a udev rule.

Each policy `block` entry matches whole-disk devices (/sys/block/*) by kernel-name glob, kind (nvme, virtio,
scsi, sata, loop, ...), model regular expression and rotational flag; every condition given must hold.

Order matters inside the kernel: switching the scheduler resets nr_requests to the new scheduler's default. So
the scheduler is written first, nr_requests after it (and re-written even if it looked right before the switch),
and before a scheduler write nr_requests is journaled as a side effect, so rollback and revert restore the
scheduler first and then the original nr_requests, byte for byte.

With `udev_rule: true` a rule file /etc/udev/rules.d/60-hosttune-block-<i>.rules (under --rootfs) carries the
same settings to devices that appear later or after a reboot. It is journaled like any other write (its original
is "absent") and removed by revert.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import InputError
from agent.fsio import read_int, read_str, read_text
from agent.hostfs import HostPaths
from agent.inspect.block import read_device
from agent.inspect.models import HostFacts
from agent.policy.model import BlockMatch, BlockSpec, Policy
from agent.policy.shapes import DEVICE_GLOB_RE, TOKEN_RE
from agent.tunable import formats
from agent.tunable.change import Change, change
from agent.tunable.tuner import Tuner
from agent.tuners.registration import register

if TYPE_CHECKING:
    from agent.tunable.writer import Writer

UDEV_RULES_DIR = "etc/udev/rules.d"


@dataclass(frozen=True)
class Disk:
    name: str
    kind: str
    model: str | None
    rotational: bool | None
    queue: Path


def disks(paths: HostPaths, facts: HostFacts | None) -> list[Disk]:
    """Whole disks under sysfs; kind and model from the host facts when given (one vocabulary with inspect)."""
    known = {d.name: d for d in facts.block_devices} if facts is not None else {}
    out: list[Disk] = []
    block = paths.sys("block")
    if not block.is_dir():
        return out
    for entry in sorted(block.iterdir(), key=lambda p: p.name):
        queue = entry / "queue"
        if not queue.is_dir():
            continue
        fact = known.get(entry.name) or read_device(paths, entry.name)  # one reading of kind and model: inspect's
        rot = read_int(queue / "rotational")
        out.append(Disk(
            name=entry.name,
            kind=fact.kind if fact else "loop",  # read_device is None only for a loop device with nothing attached
            model=fact.model if fact else None,
            rotational=None if rot is None else bool(rot),
            queue=queue))
    return out


def matches(match: BlockMatch, disk: Disk) -> bool:
    if match.name is not None and not fnmatch.fnmatchcase(disk.name, match.name):
        return False
    if match.kind is not None and disk.kind != match.kind:
        return False
    if match.model is not None and not re.search(match.model, disk.model or ""):
        return False
    return match.rotational is None or disk.rotational == match.rotational


@register
class BlockdevTuner(Tuner):
    name = "blockdev"
    order = 50
    domains = ("block", "blockdev", "disk", "io")
    sections = ("block",)

    def plan(self, policy: Policy, facts: HostFacts | None, paths: HostPaths) -> list[Change]:
        all_disks = disks(paths, facts)
        changes: list[Change] = []
        by_target: dict[str, Change] = {}
        for i, spec in enumerate(policy.block):
            matched = [d for d in all_disks if matches(spec.match, d)]
            if not matched:
                changes.append(Change(tuner=self.name, target=f"block.{i}", action="not_applicable",
                                      reason="no block device matches " + " ".join(
                                          f"{k}={v}" for k, v in spec.match.model_dump(exclude_none=True).items()),
                                      field=f"block.{i}.match"))
                continue
            for disk in matched:
                for c in self._plan_disk(i, spec, disk):
                    earlier = by_target.get(c.target)
                    if earlier is not None:
                        if earlier.value != c.value:
                            raise InputError(f"{disk.name} {c.target.rsplit('/', 1)[1]} is set to {earlier.value} "
                                             f"by {earlier.field} and to {c.value} here", field=c.field)
                        continue
                    by_target[c.target] = c
                    changes.append(c)
            if spec.udev_rule:
                changes.append(self._plan_udev(i, spec, matched, paths))
        return changes

    def _plan_disk(self, i: int, spec: BlockSpec, disk: Disk) -> list[Change]:
        out = []
        switching = False
        if spec.scheduler is not None:
            field = f"block.{i}.scheduler"
            path = disk.queue / "scheduler"
            raw = read_text(path)
            offered = formats.choices(raw)
            if raw is None or not offered:
                out.append(Change(tuner=self.name, target=f"block/{disk.name}/scheduler", desired=spec.scheduler,
                                  action="not_applicable", reason="device has no I/O scheduler", field=field))
            else:
                if spec.scheduler not in offered:
                    raise InputError(f"{disk.name} does not offer scheduler {spec.scheduler!r} "
                                     f"(offered: {', '.join(offered)})", field=field)
                c = change(self.name, f"block/{disk.name}/scheduler", current=formats.parse("choice", raw),
                           desired=spec.scheduler, value=spec.scheduler, path=path, field=field, fmt="choice")
                switching = c.action == "change"
                out.append(c)
        for setting in ("nr_requests", "read_ahead_kb"):
            desired = getattr(spec, setting)
            if desired is None:
                continue
            path = disk.queue / setting
            current = read_str(path)
            target = f"block/{disk.name}/{setting}"
            field = f"block.{i}.{setting}"
            if current is None:
                out.append(Change(tuner=self.name, target=target, desired=str(desired), action="not_applicable",
                                  reason=f"device has no {setting}", field=field))
                continue
            c = change(self.name, target, current=current, desired=str(desired), value=str(desired), path=path,
                       field=field)
            if setting == "nr_requests" and switching and c.action == "ok":
                c.action = "change"
                c.reason = "the scheduler switch resets nr_requests"
            out.append(c)
        return out

    def _plan_udev(self, i: int, spec: BlockSpec, matched: list[Disk], paths: HostPaths) -> Change:
        field = f"block.{i}.udev_rule"
        filename = f"60-hosttune-block-{i}.rules"
        rules_dir = paths.root(UDEV_RULES_DIR)
        if not rules_dir.is_dir():
            return Change(tuner=self.name, target=f"udev/{filename}", action="not_applicable",
                          reason=f"no udev rules directory ({rules_dir})", field=field)
        content = udev_rule(i, spec, matched)
        path = rules_dir / filename
        return change(self.name, f"udev/{filename}", current=read_text(path), desired="rule file", value=content,
                      path=path, field=field, fmt="text", change_reason="keeps the settings across hot-plug/reboot")

    def apply(self, change: Change, writer: Writer) -> None:
        if change.target.endswith("/scheduler") and change.path is not None:
            queue = Path(change.path).parent
            disk = change.target.split("/")[1]
            writer.protect_file(tuner=self.name, target=f"block/{disk}/nr_requests", path=queue / "nr_requests",
                                side_effect_of=change.key)
        if change.format == "text" and change.path is not None and change.value is not None:
            writer.write_file(tuner=self.name, target=change.target, path=Path(change.path), value=change.value,
                              fmt="text", desired=change.desired, restore_value=lambda raw: raw,
                              check=lambda raw: self.check_readback(change, raw), create=True)
            return
        super().apply(change, writer)


def udev_rule(i: int, spec: BlockSpec, matched: list[Disk]) -> str:
    """A rule setting the spec's queue attributes (scheduler first) on add/change of the matched disks.

    Built only from shape-checked words (the policy model checked them already; checked again here because the
    rule is executable configuration and disk names come from the host, not the policy): no quote, comma or
    newline can end a match and start another key."""
    if spec.scheduler is not None and not TOKEN_RE.fullmatch(spec.scheduler):
        raise InputError(f"scheduler {spec.scheduler!r} cannot be used in a udev rule", field=f"block.{i}.scheduler")
    attrs = []
    if spec.scheduler is not None:
        attrs.append(f'ATTR{{queue/scheduler}}="{spec.scheduler}"')
    if spec.nr_requests is not None:
        attrs.append(f'ATTR{{queue/nr_requests}}="{spec.nr_requests}"')
    if spec.read_ahead_kb is not None:
        attrs.append(f'ATTR{{queue/read_ahead_kb}}="{spec.read_ahead_kb}"')
    only_name = spec.match.name is not None and spec.match.model_dump(exclude_none=True).keys() == {"name"}
    kernels = [spec.match.name] if only_name and spec.match.name is not None else [d.name for d in matched]
    for kernel in kernels:
        if not DEVICE_GLOB_RE.fullmatch(kernel):
            raise InputError(f"device name {kernel!r} cannot be used in a udev rule", field=f"block.{i}.match.name")
    head = (f"# Written by hosttune from policy entry block.{i}: keeps these queue settings across hot-plug and\n"
            f"# reboot. `hosttune revert` removes this file.\n")
    lines = [f'ACTION=="add|change", SUBSYSTEM=="block", ENV{{DEVTYPE}}=="disk", KERNEL=="{k}", ' + ", ".join(attrs)
             for k in kernels]
    return head + "\n".join(lines) + "\n"
