"""Can the worker's weights live in the policy's hugepage pool? The one place that decides, at plan time.

A pool marked `for_weights: true` is planned only when everything below holds; otherwise the hugepages tuner
plans it `not_applicable` with the reason this module gives, and nothing is reserved for the weights:
- the policy runs a worker, on the llamacpp engine (llama-server maps a staged GGUF; the torch worker and a
  user `command` do not), with `worker.weights.backing: hugetlbfs`;
- the kernel has hugetlbfs (/proc/filesystems);
- the pool is the global 2 MiB one (the staging mount takes 2 MiB pages from the global pool) and holds the
  staged file, padding to whole pages included;
- the memory is there: the pool's new pages fit in MemAvailable.
The daemon stages the weights (agent/tuning/weights.py) only when this says yes for the applied policy.
`mlock_problem` says when `worker.weights.mlock` cannot be honoured (the memlock limit is below the weights).
"""

from __future__ import annotations

from agent.errors import InputError
from agent.fsio import read_int, read_text
from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.model_files import resolve_model
from agent.policy.model import HugepageSpec, Policy, WorkerSpec

PAGE_BYTES = 2 << 20
MIB = 1 << 20


def staged_pages(size_bytes: int) -> int:
    """2 MiB pages a staged copy of a file of `size_bytes` takes (mmap rounds a hugetlbfs file up to pages)."""
    return -(-size_bytes // PAGE_BYTES)


def model_bytes(spec: WorkerSpec) -> int | None:
    try:
        return resolve_model(spec.model).stat().st_size
    except (InputError, OSError):
        return None


def has_hugetlbfs(paths: HostPaths) -> bool | None:
    """hugetlbfs listed in /proc/filesystems; None when that file cannot be read."""
    text = read_text(paths.proc("filesystems"))
    if text is None:
        return None
    return any(line.split()[-1:] == ["hugetlbfs"] for line in text.splitlines())


def weights_pool_blocker(policy: Policy, spec: HugepageSpec, facts: HostFacts | None,
                         paths: HostPaths) -> str | None:
    """Why the worker cannot use `spec` for its weights, in plain words; None when it can."""
    worker = policy.worker
    if worker is None:
        return "the policy runs no worker: nothing would map its weights from the pool"
    if worker.engine != "llamacpp":
        return f"the {worker.engine} engine does not map its weights from hugetlbfs (only llamacpp does)"
    if worker.weights.backing != "hugetlbfs":
        return (f"worker.weights.backing is {worker.weights.backing}: nothing maps the pool "
                "(set it to hugetlbfs to stage the weights there)")
    fs = has_hugetlbfs(paths)
    if not fs:
        return "this kernel has no hugetlbfs" + (" (/proc/filesystems unreadable)" if fs is None else
                                                 " (not in /proc/filesystems)")
    if spec.size != "2M" or spec.node is not None:
        return "the weights are staged in the global pool of 2 MiB pages; this pool is " + (
            f"on node {spec.node}" if spec.node is not None else f"of {spec.size} pages")
    size = model_bytes(worker)
    if size is None:
        return "the model file cannot be read, so its size is unknown"
    need = staged_pages(size)
    if spec.count < need:
        return (f"the pool ({spec.count} pages, {spec.count * 2} MiB) is smaller than the staged model ({need} pages "
                f"of 2 MiB, {size / MIB:.1f} MiB rounded up to whole pages)")
    available = facts.memory.available_bytes if facts is not None and getattr(facts, "memory", None) else None
    if available is not None:
        have = read_int(paths.sys("kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")) or 0
        grow = max(0, spec.count - have) * PAGE_BYTES
        if grow > available:
            return (f"too little memory: the pool would take {grow / MIB:.0f} MiB more and only "
                    f"{available / MIB:.0f} MiB is available")
    return None


def mlock_problem(worker: WorkerSpec, facts: HostFacts | None) -> str | None:
    """Why `worker.weights.mlock` cannot lock the weights here; None when it can (or is not asked for)."""
    if not worker.weights.mlock or worker.weights.backing == "hugetlbfs":
        return None
    limit = facts.memory.mlock_limit_bytes if facts is not None and getattr(facts, "memory", None) else None
    size = model_bytes(worker)
    if limit is not None and size is not None and limit < size:
        return (f"worker.weights.mlock: the memlock limit ({limit / MIB:.1f} MiB) is below the weights "
                f"({size / MIB:.1f} MiB): llama-server could not lock them; raise LimitMEMLOCK for the daemon's "
                "unit or set mlock: false (the weights are loaded unlocked)")
    return None
