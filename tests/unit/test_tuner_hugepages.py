"""hugepages tuner: pools, the in-use floor, short allocations, global vs per-node."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.errors import InputError
from agent.hostfs import HostPaths
from agent.inspect import collect
from agent.policy.model import HugepageSpec, Policy
from agent.tuners.hugepages import HugepagesTuner


def plan(paths: HostPaths, *specs: HugepageSpec) -> list:
    return HugepagesTuner().plan(Policy(name="t", hugepages=list(specs)), None, paths)


@pytest.mark.host("server")
def test_global_2m_and_1g(host: HostPaths) -> None:
    two, one = plan(host, HugepageSpec(size="2M", count=16), HugepageSpec(size="1G", count=2))
    assert (two.target, two.current, two.value, two.action) == ("hugepages-2048kB/global", "8", "16", "change")
    assert two.path == str(host.sys("kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"))
    assert (one.target, one.current, one.value) == ("hugepages-1048576kB/global", "0", "2")


@pytest.mark.host("server")
def test_never_shrinks_below_pages_in_use(host: HostPaths) -> None:
    # fixture: 8 pages, 4 free -> 4 in use
    (c,) = plan(host, HugepageSpec(size="2M", count=0))
    assert c.value == "4" and c.desired == "0" and c.action == "change"
    assert "4 pages in use" in c.reason


@pytest.mark.host("server")
def test_reserved_pages_count_as_in_use_globally(host: HostPaths) -> None:
    host.sys("kernel/mm/hugepages/hugepages-2048kB/resv_hugepages").write_text("2\n")
    (c,) = plan(host, HugepageSpec(size="2M", count=1))
    assert c.value == "6"


@pytest.mark.host("server")
def test_inconsistent_counters_mean_no_shrinking(host: HostPaths) -> None:
    # more free than total cannot happen on a live kernel: pages in use are unknown, so keep them all
    host.sys("kernel/mm/hugepages/hugepages-2048kB/free_hugepages").write_text("20\n")
    (c,) = plan(host, HugepageSpec(size="2M", count=2))
    assert c.value == "8" and c.action == "ok" and "not shrinking" in c.reason


@pytest.mark.host("server")
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


# -- pools against memory (the `server` fixture: MemTotal 263856128 kB = 251.6 GiB, no per-node meminfo) ----------

@pytest.mark.host("server")
def test_pool_over_90_percent_of_host_memory_is_refused_before_any_write(host: HostPaths) -> None:
    nr = host.sys("kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
    with pytest.raises(InputError, match=r"hugepage pools on the host would take 390\.6 GiB, more than 90% of its "
                                         r"251\.6 GiB") as e:
        plan(host, HugepageSpec(size="2M", count=200_000))
    assert e.value.field == "hugepages.0.count" and e.value.exit_code == 2
    assert nr.read_text() == "8\n"


@pytest.mark.host("server")
def test_2m_and_1g_pools_count_together(host: HostPaths) -> None:
    two, one = HugepageSpec(size="2M", count=60_000), HugepageSpec(size="1G", count=120)  # 117 + 120 GiB
    assert len(plan(host, two)) == len(plan(host, one)) == 1  # each alone fits under 226 GiB
    with pytest.raises(InputError, match="on the host") as e:
        plan(host, two, one)
    assert e.value.field == "hugepages.1.count"


def test_per_node_pool_is_checked_against_the_node(host: HostPaths) -> None:
    host.sys("devices/system/node/node0/meminfo").write_text("Node 0 MemTotal:       10485760 kB\n")  # 10 GiB
    assert plan(host, HugepageSpec(size="2M", count=4000, node=0))[0].value == "4000"  # 7.8 GiB
    with pytest.raises(InputError, match=r"on node 0 would take 9\.8 GiB, more than 90% of its 10\.0 GiB") as e:
        plan(host, HugepageSpec(size="2M", count=5000, node=0))
    assert e.value.field == "hugepages.0.count"
    # the override: explicit, with a reason, and still below 100
    override = HugepageSpec(size="2M", count=5000, node=0, max_memory_pct=99, why="dedicated inference host")
    assert plan(host, override)[0].value == "5000"


@pytest.mark.host("server")
def test_node_without_its_own_meminfo_is_checked_against_the_host(host: HostPaths) -> None:
    with pytest.raises(InputError, match=r"on node 1 \(its own memory unknown: the host's\)"):
        plan(host, HugepageSpec(size="1G", count=240, node=1))


def test_a_pool_for_a_missing_node_is_still_checked(host: HostPaths) -> None:
    # "not applicable" here, but the same policy would take the memory of a host that has node 7
    with pytest.raises(InputError, match="node 7"):
        plan(host, HugepageSpec(size="1G", count=1000, node=7))


@pytest.mark.host("server")
def test_unknown_host_memory_refuses_a_pool_but_not_an_empty_one(host: HostPaths) -> None:
    host.proc("meminfo").unlink()
    with pytest.raises(InputError, match="memory size is unknown"):
        plan(host, HugepageSpec(size="2M", count=1))
    assert plan(host, HugepageSpec(size="2M", count=0))[0].value == "4"  # the in-use floor, as before


def test_facts_memory_is_used_when_given(host: HostPaths) -> None:
    facts = collect(host).model_copy(deep=True)
    facts.memory.total_bytes = 1 << 30  # 1 GiB
    with pytest.raises(InputError, match=r"more than 90% of its 1\.0 GiB"):
        HugepagesTuner().plan(Policy(name="t", hugepages=[HugepageSpec(size="2M", count=500)]), facts, host)


@pytest.mark.parametrize(("fields", "message"), [
    ({"count": 1 << 40}, "less than or equal to 16777216"),
    ({"count": 1, "node": 5000}, "less than or equal to 1023"),
    ({"count": 1, "max_memory_pct": 100, "why": "all of it"}, "less than 100"),
    ({"count": 1, "max_memory_pct": 95}, "needs a `why:`"),
    ({"count": 1, "max_memory_pct": 95, "why": "  "}, "needs a `why:`"),
])
def test_absurd_counts_and_unexplained_overrides_fail_validation(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        HugepageSpec.model_validate({"size": "2M", **fields})
