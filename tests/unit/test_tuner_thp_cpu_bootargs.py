"""THP, CPU (cpufreq) and kernel command line tuners on fixture trees."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.errors import InputError
from agent.hostfs import HostPaths
from agent.policy.model import CpuSpec, Policy, ThpSpec
from agent.tuners.bootargs import BootargsTuner
from agent.tuners.cpu import CpuTuner
from agent.tuners.thp import ThpTuner


def test_thp_current_is_bracketed_choice(host: HostPaths) -> None:
    changes = ThpTuner().plan(Policy(name="t", thp=ThpSpec(enabled="madvise", defrag="defer+madvise")), None, host)
    by = {c.target: c for c in changes}
    assert by["thp.enabled"].action == "ok" and by["thp.enabled"].current == "madvise"
    assert by["thp.defrag"].action == "change" and by["thp.defrag"].current == "madvise"
    assert by["thp.defrag"].format == "choice"


def test_thp_choice_not_offered(host: HostPaths) -> None:
    host.sys("kernel/mm/transparent_hugepage/defrag").write_text("always [madvise] never\n")
    with pytest.raises(InputError, match="not offered") as e:
        ThpTuner().plan(Policy(name="t", thp=ThpSpec(defrag="defer")), None, host)
    assert e.value.field == "thp.defrag"


def test_thp_absent_is_not_applicable(host: HostPaths) -> None:
    host.sys("kernel/mm/transparent_hugepage/enabled").unlink()
    (c,) = ThpTuner().plan(Policy(name="t", thp=ThpSpec(enabled="never")), None, host)
    assert c.action == "not_applicable"


@pytest.mark.host("server")
def test_cpu_governor_and_epp_per_policy(host: HostPaths) -> None:
    changes = CpuTuner().plan(Policy(name="t", cpu=CpuSpec(governor="performance",
                                                          energy_performance_preference="balance_power")), None, host)
    targets = [c.target for c in changes]
    assert targets[:4] == [f"cpufreq/policy{n}/scaling_governor" for n in range(4)]
    assert targets[4:] == [f"cpufreq/policy{n}/energy_performance_preference" for n in range(4)]
    assert {c.current for c in changes[:4]} == {"powersave"}
    assert all(c.action == "change" for c in changes)


@pytest.mark.host("server")
def test_cpu_shared_policy_planned_once(host: HostPaths) -> None:
    # cpu1 shares policy0 (as on many real machines): one target, not two
    link = host.sys("devices/system/cpu/cpu1/cpufreq")
    link.unlink()
    link.symlink_to("../cpufreq/policy0")
    changes = CpuTuner().plan(Policy(name="t", cpu=CpuSpec(governor="performance")), None, host)
    assert [c.target.split("/")[1] for c in changes] == ["policy0", "policy2", "policy3"]


def test_cpu_governor_not_offered(host: HostPaths) -> None:
    with pytest.raises(InputError, match="schedutil") as e:
        CpuTuner().plan(Policy(name="t", cpu=CpuSpec(governor="schedutil")), None, host)
    assert e.value.field == "cpu.governor"


def test_cpu_without_cpufreq_is_not_applicable(host_tree: Callable[[str], HostPaths]) -> None:
    paths = host_tree("no-cpufreq")
    changes = CpuTuner().plan(Policy(name="t", cpu=CpuSpec(governor="performance")), None, paths)
    assert [(c.action, c.reason) for c in changes] == [("not_applicable", "no cpufreq driver on this host")]


def test_bootargs_are_advice_with_reboot(host: HostPaths) -> None:
    policy = Policy(name="t", kernel_cmdline={"isolcpus": "2-3", "quiet": None, "hugepagesz": "2M"})
    by = {c.target: c for c in BootargsTuner().plan(policy, None, host)}
    assert by["cmdline/isolcpus"].action == "change" and by["cmdline/isolcpus"].reboot_required
    assert by["cmdline/isolcpus"].current == "(absent)"
    assert by["cmdline/quiet"].action == "ok" and not by["cmdline/quiet"].reboot_required
    # running kernel has hugepagesz=1G: a different value is a change
    assert by["cmdline/hugepagesz"].current == "hugepagesz=1G" and by["cmdline/hugepagesz"].action == "change"
    assert not any(c.writes for c in by.values())
