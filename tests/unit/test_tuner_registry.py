"""The tuner registry: self-registration, order, and a clean base for new tuners (gpu.py builds on it)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from agent.gpu.nvml import Nvml
from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.policy.model import Policy
from agent.tunable import formats
from agent.tunable.change import Change, satisfies
from agent.tunable.tuner import Tuner
from agent.tuners import registration, registry
from agent.tuners.gpu import GpuTuner


def test_builtin_tuners_register_themselves_in_order() -> None:
    names = [t.name for t in registry.tuners()]
    for expected in ("sysctl", "hugepages", "thp", "cpu", "blockdev", "bootargs"):
        assert expected in names
    assert names.index("sysctl") < names.index("hugepages") < names.index("thp") < names.index("blockdev")
    assert names[-1] == "bootargs" or names.index("bootargs") > names.index("blockdev")


def test_duplicate_name_is_refused() -> None:
    class Again(Tuner):
        name: ClassVar[str] = "sysctl"

        def plan(self, policy: Policy, facts: HostFacts | None, paths: HostPaths) -> list[Change]:
            return []

    with pytest.raises(RuntimeError, match="twice"):
        registry.register(Again)


def test_every_tuner_module_is_imported_by_the_registry() -> None:
    """The registry imports the tuner modules by name (no import by string): one left out would never run."""
    package = Path(registry.__file__).parent
    modules = {p.stem for p in package.glob("*.py")} - {"__init__", "registry", "registration"}
    assert {m.__name__.rsplit(".", 1)[1] for m in registry.BUILTIN} == modules
    assert {m.__name__ for m in registry.BUILTIN} <= {c.__module__ for c in registration.registered().values()}


def test_a_tuner_set_builds_each_tuner_once_and_hands_the_gpu_tuner_its_session() -> None:
    session = Nvml(dry_run=True)  # never initialised: nothing here calls NVML
    tuners = registry.TunerSet(session)
    gpu = tuners.get("gpu")
    assert isinstance(gpu, GpuTuner) and gpu.nvml is session
    assert tuners.get("gpu") is gpu and tuners.get("sysctl") is tuners.get("sysctl")
    assert [t for t in tuners.enabled() if t.name == "gpu"] == [gpu]
    assert registry.TunerSet(session).get("gpu") is not gpu  # another operation builds its own
    with pytest.raises(KeyError, match="no tuner named"):
        tuners.get("nope")


def test_only_selects_and_unknown_fails() -> None:
    assert [t.name for t in registry.tuners(["thp", "sysctl"])] == ["sysctl", "thp"]
    with pytest.raises(KeyError):
        registry.tuners(["nope"])


@pytest.mark.parametrize(("current", "value", "compare", "ok"), [
    ("60", "60", "eq", True), ("32768\t60999", "32768 60999", "eq", True), ("5", "60", "eq", False),
    ("2000000", "1048576", "ge", True), ("65530", "1048576", "ge", False),
    ("10", "20", "le", True), ("30", "20", "le", False), (None, "1", "eq", False), ("abc", "1", "ge", False)])
def test_satisfies(current: str | None, value: str, compare: str, ok: bool) -> None:
    assert satisfies(current, value, compare) is ok  # type: ignore[arg-type]


@pytest.mark.parametrize(("raw", "value", "rendered"), [
    ("always [madvise] never\n", "never", "always madvise [never]\n"),
    ("always defer defer+madvise [madvise] never\n", "defer", "always [defer] defer+madvise madvise never\n"),
    ("always defer defer+madvise [madvise] never\n", "defer+madvise", "always defer [defer+madvise] madvise never\n"),
    ("none [mq-deadline] kyber bfq \n", "none", "[none] mq-deadline kyber bfq \n"),
])
def test_choice_render_matches_kernel_format(raw: str, value: str, rendered: str) -> None:
    assert formats.render("choice", raw, value) == rendered
    assert formats.parse("choice", rendered) == value
    assert formats.restore_value("choice", raw) == formats.parse("choice", raw)


def test_a_section_no_tuner_claims_is_unsupported_not_dropped(host: HostPaths) -> None:
    from agent.tuners.sysctl import SysctlTuner
    from agent.tuning.plan import make_plan

    policy = Policy.model_validate({"name": "t", "sysctl": {"vm.swappiness": 1},
                                    "thp": {"enabled": "never"}, "gpu": [{"power_limit_w": 300}]})
    plan = make_plan(policy, None, host, tuners=[SysctlTuner()])
    rows = {(c.tuner, c.action) for c in plan.changes}
    assert rows == {("sysctl", "change"), ("thp", "unsupported"), ("gpu", "unsupported")}
    assert not plan.writes[1:]
