"""The weights pool at plan time: a `for_weights` pool is reserved only when the worker can map its weights from
it; otherwise `plan` says why in plain words and reserves nothing. Also the worker's load mode from
worker.weights, and the mlock check against the memlock limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.hostfs import HostPaths
from agent.inspect import collect
from agent.inspect.models import HostFacts
from agent.model_files import default_model_path
from agent.policy.model import HugepageSpec, Policy, WeightsSpec, WorkerSpec
from agent.tunable.change import Change
from agent.tunable.weights_pool import staged_pages
from agent.tuners.hugepages import HugepagesTuner
from agent.tuning.plan import make_plan
from agent.worker.engines import LlamaCppEngine

MODEL_PAGES = staged_pages(default_model_path().stat().st_size)
# the one-node VM (this machine's kind): an empty 2M pool, so a planned count is the count asked for
pytestmark = pytest.mark.host("vm-1node")


def policy(count: int = MODEL_PAGES + 4, *, engine: str = "llamacpp", backing: str = "hugetlbfs",
           mlock: bool = False, size: str = "2M", node: int | None = None, model: str = "default") -> Policy:
    worker = WorkerSpec(engine=engine, model=model, argv=["srv"] if engine == "command" else None,  # type: ignore[arg-type]
                        weights=WeightsSpec(backing=backing, mlock=mlock))  # type: ignore[arg-type]
    return Policy(name="t", hugepages=[HugepageSpec(size=size, count=count, node=node, for_weights=True)],  # type: ignore[arg-type]
                  worker=worker)


@pytest.fixture
def hugetlbfs(host: HostPaths) -> HostPaths:
    host.proc("filesystems").write_text("nodev\tsysfs\nnodev\ttmpfs\nnodev\thugetlbfs\n\text4\n")
    return host


def weights_row(p: Policy, paths: HostPaths, facts: HostFacts | None = None) -> Change:
    rows = HugepagesTuner().plan(p, facts, paths)
    (row,) = [r for r in rows if r.field == "hugepages.0.count"]
    return row


def test_usable_pool_is_planned_and_says_it_holds_the_weights(hugetlbfs: HostPaths) -> None:
    row = weights_row(policy(), hugetlbfs)
    assert row.action == "change" and row.value == str(MODEL_PAGES + 4)
    assert f"holds the staged weights ({MODEL_PAGES} pages)" in row.reason


@pytest.mark.parametrize(("kw", "words"), [
    ({"backing": "page_cache"}, "worker.weights.backing is page_cache: nothing maps the pool"),
    ({"backing": "anon"}, "worker.weights.backing is anon"),
    ({"engine": "torch"}, "the torch engine does not map its weights from hugetlbfs"),
    ({"engine": "command"}, "the command engine does not map"),
    ({"count": MODEL_PAGES - 1}, f"is smaller than the staged model ({MODEL_PAGES} pages"),
    ({"size": "1G", "count": 1}, "this pool is of 1G pages"),
    ({"node": 0}, "this pool is on node 0"),
])
def test_unusable_pool_reserves_nothing_and_says_why(hugetlbfs: HostPaths, kw: dict[str, object],
                                                      words: str) -> None:
    p = policy(**kw)  # type: ignore[arg-type]
    row = weights_row(p, hugetlbfs)
    assert row.action == "not_applicable" and not row.writes
    assert row.reason.startswith("reserves nothing for the weights: ") and words in row.reason
    plan = make_plan(p, None, hugetlbfs, tuners=[HugepagesTuner()])
    assert not [c for c in plan.writes if c.tuner == "hugepages"]


def test_no_worker_reserves_nothing(hugetlbfs: HostPaths) -> None:
    p = Policy(name="t", hugepages=[HugepageSpec(size="2M", count=64, for_weights=True)])
    assert "runs no worker" in weights_row(p, hugetlbfs).reason


def test_kernel_without_hugetlbfs(host: HostPaths) -> None:
    host.proc("filesystems").write_text("nodev\tsysfs\n\text4\n")
    row = weights_row(policy(), host)
    assert row.action == "not_applicable" and "no hugetlbfs (not in /proc/filesystems)" in row.reason
    host.proc("filesystems").unlink()
    assert "/proc/filesystems unreadable" in weights_row(policy(), host).reason


def test_too_little_available_memory(hugetlbfs: HostPaths) -> None:
    facts = collect(hugetlbfs).model_copy(deep=True)
    facts.memory.available_bytes = 4 << 20  # 4 MiB free: the pool cannot grow by the model's size
    row = weights_row(policy(count=400), hugetlbfs, facts)
    assert row.action == "not_applicable" and "too little memory" in row.reason and "4 MiB is available" in row.reason


def test_unusable_pool_is_not_counted_against_memory(hugetlbfs: HostPaths) -> None:
    # a weights pool larger than the 90% memory limit is refused only when it would be reserved
    huge = policy(count=1 << 23, backing="page_cache")
    assert weights_row(huge, hugetlbfs).action == "not_applicable"


def test_a_plain_pool_is_unaffected(hugetlbfs: HostPaths) -> None:
    p = policy(backing="page_cache").model_copy(update={"hugepages": [HugepageSpec(size="2M", count=16)]})
    (row,) = HugepagesTuner().plan(p, None, hugetlbfs)
    assert row.action == "change" and "weights" not in row.reason


def test_mlock_above_the_memlock_limit_is_an_unsupported_row(hugetlbfs: HostPaths) -> None:
    facts = collect(hugetlbfs).model_copy(deep=True)
    facts.memory.mlock_limit_bytes = 8 << 20
    rows = HugepagesTuner().plan(policy(backing="page_cache", mlock=True), facts, hugetlbfs)
    (row,) = [r for r in rows if r.target == "worker-weights/mlock"]
    assert row.action == "unsupported" and row.field == "worker.weights.mlock"
    assert "memlock limit (8.0 MiB) is below the weights" in row.reason
    facts.memory.mlock_limit_bytes = None  # unlimited
    rows = HugepagesTuner().plan(policy(backing="page_cache", mlock=True), facts, hugetlbfs)
    assert not [r for r in rows if r.target == "worker-weights/mlock"]


@pytest.mark.parametrize(("backing", "mlock", "mode"), [
    ("page_cache", False, None), ("page_cache", True, "mmap+mlock"), ("hugetlbfs", False, None),
    ("hugetlbfs", True, None), ("anon", False, "none"), ("anon", True, "mlock")])
def test_load_mode_follows_worker_weights(backing: str, mlock: bool, mode: str | None) -> None:
    spec = WorkerSpec(weights=WeightsSpec(backing=backing, mlock=mlock))  # type: ignore[arg-type]
    argv = LlamaCppEngine().argv(spec, Path("/m.gguf"), None)
    assert (argv[argv.index("--load-mode") + 1] if "--load-mode" in argv else None) == mode


def test_load_mode_is_reserved() -> None:
    from agent.errors import InputError
    with pytest.raises(InputError, match="worker field"):
        LlamaCppEngine().argv(WorkerSpec(extra_args=["--load-mode=none"]), Path("/m.gguf"), None)


def test_weights_fields_are_allow_listed() -> None:
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="backing"):
        WeightsSpec(backing="tmpfs")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="extra"):
        WeightsSpec.model_validate({"backing": "anon", "path": "/etc"})
