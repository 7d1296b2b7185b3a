"""Block device tuner: matching, scheduler validation, nr_requests after a scheduler switch, udev rules."""

from __future__ import annotations

import pytest

from agent.errors import InputError
from agent.hostfs import HostPaths
from agent.policy.model import BlockMatch, BlockSpec, Policy
from agent.tuners.blockdev import BlockdevTuner, classify


def plan(paths: HostPaths, *specs: BlockSpec) -> list:
    return BlockdevTuner().plan(Policy(name="t", block=list(specs)), None, paths)


@pytest.mark.parametrize(("match", "devices"), [
    (BlockMatch(name="nvme*"), {"nvme0n1"}),
    (BlockMatch(kind="sata"), {"sda"}),
    (BlockMatch(kind="loop"), {"loop0"}),
    (BlockMatch(model=r"^Samsung"), {"nvme0n1"}),
    (BlockMatch(rotational=False), {"nvme0n1", "loop0"}),
    (BlockMatch(rotational=False, name="nvme*"), {"nvme0n1"}),
    (BlockMatch(model="WDC", rotational=False), set()),
])
@pytest.mark.host("server")
def test_matching(host: HostPaths, match: BlockMatch, devices: set[str]) -> None:
    changes = plan(host, BlockSpec(match=match, read_ahead_kb=1024))
    if not devices:
        assert [c.action for c in changes] == ["not_applicable"]
        return
    assert {c.target.split("/")[1] for c in changes} == devices


@pytest.mark.host("server")
def test_scheduler_first_then_nr_requests_forced(host: HostPaths) -> None:
    # nr_requests already 256, but the switch to kyber resets it: it must be written again
    changes = plan(host, BlockSpec(match=BlockMatch(name="nvme0n1"), read_ahead_kb=4096, scheduler="kyber",
                                   nr_requests=256))
    assert [c.target for c in changes] == ["block/nvme0n1/scheduler", "block/nvme0n1/nr_requests",
                                           "block/nvme0n1/read_ahead_kb"]
    sched, nr, ra = changes
    assert (sched.current, sched.value, sched.action) == ("mq-deadline", "kyber", "change")
    assert nr.action == "change" and "resets" in nr.reason
    assert (ra.current, ra.action) == ("128", "change")


@pytest.mark.host("server")
def test_scheduler_not_offered_names_field(host: HostPaths) -> None:
    with pytest.raises(InputError, match="kyber") as e:
        plan(host, BlockSpec(match=BlockMatch(kind="loop")), BlockSpec(match=BlockMatch(name="sda"), scheduler="kyber"))
    assert e.value.field == "block.1.scheduler"


def test_two_entries_disagreeing_on_one_device(host: HostPaths) -> None:
    with pytest.raises(InputError, match="read_ahead_kb") as e:
        plan(host, BlockSpec(match=BlockMatch(rotational=False), read_ahead_kb=1024),
             BlockSpec(match=BlockMatch(name="nvme*"), read_ahead_kb=4096))
    assert e.value.field == "block.1.read_ahead_kb"


@pytest.mark.host("server")
def test_udev_rule_planned_for_name_glob(host: HostPaths) -> None:
    changes = plan(host, BlockSpec(match=BlockMatch(name="nvme*"), scheduler="none", read_ahead_kb=4096,
                                   udev_rule=True))
    rule = changes[-1]
    assert rule.target == "udev/60-hosttune-block-0.rules" and rule.action == "change" and rule.format == "text"
    assert rule.path == str(host.root("etc/udev/rules.d/60-hosttune-block-0.rules"))
    assert 'KERNEL=="nvme*"' in (rule.value or "")
    assert (rule.value or "").index("queue/scheduler") < (rule.value or "").index("queue/read_ahead_kb")


@pytest.mark.host("server")
def test_udev_rule_lists_devices_for_other_matches(host: HostPaths) -> None:
    rule = plan(host, BlockSpec(match=BlockMatch(rotational=False), read_ahead_kb=512, udev_rule=True))[-1]
    assert 'KERNEL=="loop0"' in (rule.value or "") and 'KERNEL=="nvme0n1"' in (rule.value or "")


@pytest.mark.host("server")
def test_udev_rule_without_udev_is_not_applicable(host: HostPaths) -> None:
    host.root("etc/udev/rules.d").rmdir()
    rule = plan(host, BlockSpec(match=BlockMatch(name="sda"), read_ahead_kb=512, udev_rule=True))[-1]
    assert rule.action == "not_applicable"


@pytest.mark.parametrize(("name", "real", "kind"), [
    ("nvme0n1", "/sys/devices/pci0000:00/nvme/nvme0/nvme0n1", "nvme"),
    ("vda", "/sys/devices/pci0000:00/0000:00:03.0/virtio0/block/vda", "virtio"),
    ("sda", "/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda", "sata"),
    ("sdb", "/sys/devices/pci0000:00/0000:00:10.0/host2/target2:0:0/2:0:0:0/block/sdb", "scsi"),
    ("dm-0", "/sys/devices/virtual/block/dm-0", "dm"),
    ("zram0", "/sys/devices/virtual/block/zram0", "other"),
])
def test_classify(name: str, real: str, kind: str) -> None:
    assert classify(name, real) == kind
