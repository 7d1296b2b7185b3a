"""Block device tuner: matching, scheduler validation, nr_requests after a scheduler switch, udev rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import InputError
from agent.hostfs import HostPaths
from agent.inspect import collect
from agent.policy.model import BlockMatch, BlockSpec, Policy
from agent.tuners.blockdev import BlockdevTuner, disks
from tests.support.trees import FIXTURE_HOSTS, make_tree


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


@pytest.mark.parametrize("scenario", sorted(p.name for p in FIXTURE_HOSTS.iterdir() if p.is_dir()))
def test_without_facts_the_tuner_reads_disks_as_inspect_does(scenario: str, tmp_path: Path) -> None:
    """One reading of a disk's kind and model (agent.inspect.block), with or without host facts handed in."""
    paths = make_tree(scenario, tmp_path / "host")
    facts = collect(paths, nvml=None)
    listed = {d.name: (d.kind, d.model) for d in facts.block_devices}
    read = {d.name: (d.kind, d.model) for d in disks(paths, None)}
    assert listed and {n: read[n] for n in listed} == listed
    assert all(read[n][0] == "loop" for n in set(read) - set(listed))  # only empty loop devices are not facts
