"""hugepages tuner: persistent 2M and 1G pools, global or per NUMA node.

Global pools are /sys/kernel/mm/hugepages/hugepages-<kB>kB/nr_hugepages; per-node pools are
/sys/devices/system/node/nodeN/hugepages/hugepages-<kB>kB/nr_hugepages (the global count is their sum, so a
policy sets a size either globally or per node, not both).

Two things the kernel does quietly and this tuner does not:
- a pool asked to grow may come up short (fragmented memory; common for 1G pages at run time). The write is read
  back and a short pool is an error naming the count the kernel gave, and the transaction rolls back.
- a pool asked to shrink below the pages in use (total - free, plus reserved ones globally) turns the rest into
  surplus pages. The plan never goes below that floor and says so in `reason`.

And one thing the kernel does that a policy must not be able to ask for: a pool larger than memory takes every
free page and leaves the rest to the OOM killer. Before anything else, the policy's pools (2M and 1G together,
counts already computed) are checked against memory: all of them against the host's MemTotal, and the pools of
each node against that node's (the host's where the node's is unknown). The limit is 90% unless a pool of that
scope says `max_memory_pct` (below 100, with a `why`). Over the limit is bad input, refused at plan time.

A pool marked `for_weights` is planned only when the worker can put its weights in it (otherwise it is
`not_applicable`, reserves nothing, and agent/tunable/weights_pool.py says why); a `worker.weights.mlock` the
memlock limit cannot honour is shown as an `unsupported` row.
"""

from __future__ import annotations

from pathlib import Path

from agent.errors import InputError
from agent.fsio import read_int
from agent.hostfs import HostPaths
from agent.inspect import parse
from agent.inspect.models import HostFacts
from agent.policy.model import DEFAULT_HUGEPAGE_MEMORY_PCT, HugepageSpec, Policy
from agent.tunable.change import Change, change
from agent.tunable.tuner import Tuner
from agent.tunable.weights_pool import mlock_problem, model_bytes, staged_pages, weights_pool_blocker
from agent.tuners.registration import register

SIZE_KB = {"2M": 2048, "1G": 1048576}
GIB = 1 << 30


def memory_totals(facts: HostFacts | None, paths: HostPaths) -> tuple[int | None, dict[int, int]]:
    """(host MemTotal, {node: MemTotal}) in bytes, from the facts, else read from the tree; None/absent when
    unknown. Facts built in part (model_construct, a collector that failed) fall back to the tree."""
    memory, cpu = getattr(facts, "memory", None), getattr(facts, "cpu", None)
    if memory is not None and memory.total_bytes and cpu is not None:
        nodes = {n.id: n.memory_total_bytes for n in cpu.numa_nodes if n.memory_total_bytes}
        return memory.total_bytes, nodes
    host = (parse.meminfo(paths.proc("meminfo")) or {}).get("MemTotal")
    node_root = paths.sys("devices/system/node")
    out: dict[int, int] = {}
    for d in node_root.glob("node[0-9]*") if node_root.is_dir() else []:
        total = (parse.meminfo(d / "meminfo") or {}).get("MemTotal") if d.name[4:].isdigit() else None
        if total:
            out[int(d.name[4:])] = total
    return host or None, out


def check_memory(specs: list[HugepageSpec], host_total: int | None, node_totals: dict[int, int]) -> None:
    """InputError(field=hugepages.<i>.count) naming the pool that takes its scope over the limit."""
    scopes: list[tuple[str, int | None, list[int]]] = []
    for node in sorted({s.node for s in specs if s.node is not None}):
        known = node_totals.get(node)
        where = f"node {node}" if known else f"node {node} (its own memory unknown: the host's)"
        scopes.append((where, known or host_total, [i for i, s in enumerate(specs) if s.node == node]))
    scopes.append(("the host", host_total, list(range(len(specs)))))  # after the nodes: the narrower scope speaks
    for where, total, members in scopes:
        pct = max((specs[i].max_memory_pct or DEFAULT_HUGEPAGE_MEMORY_PCT for i in members),
                  default=DEFAULT_HUGEPAGE_MEMORY_PCT)
        taken = 0
        for i in members:
            spec = specs[i]
            taken += spec.count * SIZE_KB[spec.size] * 1024
            if taken == 0:
                continue
            if total is None:
                raise InputError("the host's memory size is unknown (no MemTotal in meminfo): a hugepage pool "
                                 "cannot be checked against it", field=f"hugepages.{i}.count")
            if taken * 100 > total * pct:
                raise InputError(
                    f"hugepage pools on {where} would take {taken / GIB:.1f} GiB, more than {pct:g}% of its "
                    f"{total / GIB:.1f} GiB of memory (the kernel would take every free page and the OOM killer "
                    f"the rest); lower `count`, or set `max_memory_pct` (below 100) with a `why`",
                    field=f"hugepages.{i}.count")


def pool_dir(paths: HostPaths, size_kb: int, node: int | None) -> Path:
    name = f"hugepages-{size_kb}kB"
    if node is None:
        return paths.sys("kernel/mm/hugepages", name)
    return paths.sys("devices/system/node", f"node{node}", "hugepages", name)


def pages_in_use(pool: Path, *, global_pool: bool) -> tuple[int, str]:
    """Pages the pool cannot give back now, and how that was decided: allocated (total - free), plus reserved
    ones for the global pool. Counters that contradict each other (more free than total: not a live kernel, or
    a torn read) mean "cannot tell", and then every page counts as in use, so the pool is never shrunk."""
    total = read_int(pool / "nr_hugepages") or 0
    free = read_int(pool / "free_hugepages") or 0
    reserved = (read_int(pool / "resv_hugepages") or 0) if global_pool else 0
    if free > total:
        return total, f"free ({free}) exceeds total ({total}): pages in use unknown, not shrinking below {total}"
    in_use = min(total, total - free + reserved)
    return in_use, f"{in_use} pages in use: shrinks only to {in_use}"


@register
class HugepagesTuner(Tuner):
    name = "hugepages"
    order = 20
    domains = ("hugepages", "memory")
    sections = ("hugepages",)

    def plan(self, policy: Policy, facts: HostFacts | None, paths: HostPaths) -> list[Change]:
        self._check_pools(policy.hugepages)
        blockers = {i: weights_pool_blocker(policy, spec, facts, paths)
                    for i, spec in enumerate(policy.hugepages) if spec.for_weights}
        # A weights pool that will not be reserved takes no memory: counted as empty (indexes kept for the field)
        check_memory([s.model_copy(update={"count": 0}) if blockers.get(i) else s
                      for i, s in enumerate(policy.hugepages)], *memory_totals(facts, paths))
        out = [self._plan_one(i, spec, paths) if not spec.for_weights
               else self._plan_weights(i, spec, blockers[i], policy, paths) for i, spec in enumerate(policy.hugepages)]
        mlock = mlock_problem(policy.worker, facts) if policy.worker is not None else None
        if mlock:
            out.append(Change(tuner=self.name, target="worker-weights/mlock", desired="true", action="unsupported",
                              reason=mlock, field="worker.weights.mlock"))
        return out

    def _plan_weights(self, i: int, spec: HugepageSpec, blocker: str | None, policy: Policy,
                      paths: HostPaths) -> Change:
        if blocker is not None:
            return Change(tuner=self.name, target=f"hugepages-{SIZE_KB[spec.size]}kB/weights",
                          desired=str(spec.count), action="not_applicable",
                          reason=f"reserves nothing for the weights: {blocker}", field=f"hugepages.{i}.count")
        planned = self._plan_one(i, spec, paths)
        size = model_bytes(policy.worker) if policy.worker is not None else None
        if size is not None:
            note = f"holds the staged weights ({staged_pages(size)} pages)"
            planned.reason = f"{planned.reason}; {note}" if planned.reason else note
        return planned

    @staticmethod
    def _check_pools(specs: list[HugepageSpec]) -> None:
        global_sizes = {s.size for s in specs if s.node is None}
        for i, spec in enumerate(specs):
            if spec.node is not None and spec.size in global_sizes:
                raise InputError(f"{spec.size} pages are set both globally and for node {spec.node}; the global "
                                 f"pool is the sum of the node pools, set one or the other", field=f"hugepages.{i}")

    def _plan_one(self, i: int, spec: HugepageSpec, paths: HostPaths) -> Change:
        field = f"hugepages.{i}.count"
        size_kb = SIZE_KB[spec.size]
        where = "global" if spec.node is None else f"node{spec.node}"
        target = f"hugepages-{size_kb}kB/{where}"
        pool = pool_dir(paths, size_kb, spec.node)
        nr = pool / "nr_hugepages"
        if not nr.exists():
            if spec.node is not None and not paths.sys("devices/system/node", f"node{spec.node}").is_dir():
                why = f"no NUMA node {spec.node} on this host"
            else:
                why = f"no {spec.size} hugepage pool on this host"
            return Change(tuner=self.name, target=target, desired=str(spec.count), action="not_applicable",
                          reason=why, field=field)
        current = read_int(nr)
        in_use, why = pages_in_use(pool, global_pool=spec.node is None)
        value = spec.count
        reason = ""
        if spec.count < in_use:
            value = in_use
            reason = why
        return change(self.name, target, current=None if current is None else str(current),
                      desired=str(spec.count), value=str(value), path=nr, field=field,
                      ok_reason=reason or "already set", change_reason=reason)

    def check_readback(self, change: Change, raw: str | None) -> str | None:
        asked = int(change.value or 0)
        try:
            got = int((raw or "").split()[0])
        except (ValueError, IndexError):
            return f"nr_hugepages reads back {raw!r}"
        size = "1G" if change.target.startswith("hugepages-1048576kB") else "2M"
        if got < asked:
            return (f"short allocation: asked for {asked} pages of {size}, the kernel gave {got} (not enough "
                    f"contiguous free memory; for a pool that must exist, reserve it on the kernel command line: "
                    f"hugepagesz={size} hugepages={asked})")
        if got > asked:
            return f"pool holds {got} pages of {size}, asked for {asked}: pages in use cannot be freed"
        return None
