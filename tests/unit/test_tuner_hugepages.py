"""hugepages tuner: pools, the in-use floor, short allocations, global vs per-node."""

from __future__ import annotations

import pytest

from agent.errors import InputError
from agent.hostfs import HostPaths
from agent.policy.model import HugepageSpec, Policy
from agent.tuners.hugepages import HugepagesTuner


def plan(paths: HostPaths, *specs: HugepageSpec) -> list:
    return HugepagesTuner().plan(Policy(name="t", hugepages=list(specs)), None, paths)


def test_global_2m_and_1g(host: HostPaths) -> None:
    two, one = plan(host, HugepageSpec(size="2M", count=16), HugepageSpec(size="1G", count=2))
    assert (two.target, two.current, two.value, two.action) == ("hugepages-2048kB/global", "8", "16", "change")
    assert two.path == str(host.sys("kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"))
    assert (one.target, one.current, one.value) == ("hugepages-1048576kB/global", "0", "2")


def test_never_shrinks_below_pages_in_use(host: HostPaths) -> None:
    # fixture: 8 pages, 4 free -> 4 in use
    (c,) = plan(host, HugepageSpec(size="2M", count=0))
    assert c.value == "4" and c.desired == "0" and c.action == "change"
    assert "4 pages in use" in c.reason


def test_reserved_pages_count_as_in_use_globally(host: HostPaths) -> None:
    host.sys("kernel/mm/hugepages/hugepages-2048kB/resv_hugepages").write_text("2\n")
    (c,) = plan(host, HugepageSpec(size="2M", count=1))
    assert c.value == "6"


def test_inconsistent_counters_mean_no_shrinking(host: HostPaths) -> None:
    # more free than total cannot happen on a live kernel: pages in use are unknown, so keep them all
    host.sys("kernel/mm/hugepages/hugepages-2048kB/free_hugepages").write_text("20\n")
    (c,) = plan(host, HugepageSpec(size="2M", count=2))
    assert c.value == "8" and c.action == "ok" and "not shrinking" in c.reason


def test_per_node_pool(host: HostPaths) -> None:
    (c,) = plan(host, HugepageSpec(size="2M", count=12, node=1))
    assert c.target == "hugepages-2048kB/node1"
    assert c.path == str(host.sys("devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages"))
    assert (c.current, c.value) == ("8", "12")


def test_missing_node_or_size_is_not_applicable(host: HostPaths) -> None:
    (c,) = plan(host, HugepageSpec(size="2M", count=1, node=7))
    assert c.action == "not_applicable" and "no NUMA node 7" in c.reason
    import shutil
    shutil.rmtree(host.sys("kernel/mm/hugepages/hugepages-1048576kB"))
    (c,) = plan(host, HugepageSpec(size="1G", count=1))
    assert c.action == "not_applicable" and "no 1G" in c.reason


def test_global_and_node_pool_of_one_size_conflict(host: HostPaths) -> None:
    with pytest.raises(InputError) as e:
        plan(host, HugepageSpec(size="2M", count=4), HugepageSpec(size="2M", count=4, node=0))
    assert e.value.field == "hugepages.1"


def test_short_allocation_is_reported_with_counts(host: HostPaths) -> None:
    (c,) = plan(host, HugepageSpec(size="1G", count=4))
    msg = HugepagesTuner().check_readback(c, "2\n")
    assert msg is not None and "asked for 4" in msg and "gave 2" in msg and "hugepages=4" in msg
    assert HugepagesTuner().check_readback(c, "4\n") is None
    assert "cannot be freed" in (HugepagesTuner().check_readback(c, "5\n") or "")


def test_negative_count_rejected_by_policy_model() -> None:
    with pytest.raises(ValueError):
        HugepageSpec(size="2M", count=-1)
