"""Test-suite wiring: tier markers (skip with a reason, or fail on CI), the host guard that checks the suite
leaves sysctl, hugepages, THP and block queue values as it found them, and the fixtures every tier shares.

`host` gives HostPaths over a fresh copy of a host tree (tests/support/trees.py), so tuners may write and tests
can compare the tree byte for byte; `host_tree(name)` copies the committed fixture host of that name
(tests/fixtures/hosts/<name>) or builds the scenario of that name."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.hostfs import HostPaths
from tests.support import hostguard, tiers
from tests.support.trees import DEFAULT_HOST, make_tree

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files (tests/fixtures/hosts/*/expected.json) from the current output")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when the run was asked to rewrite golden files instead of comparing with them."""
    return bool(request.config.getoption("--update-golden"))


PROCESS_TIER = Path(__file__).resolve().parent / "process"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/process is in the process tier (`-m process` / `-m "not process"` select by it)."""
    for item in items:
        if item.path.is_relative_to(PROCESS_TIER):
            item.add_marker(pytest.mark.process)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for tier in tiers.CHECKS:
        if item.get_closest_marker(tier) is None:
            continue
        why = tiers.missing(tier)
        if why is None:
            continue
        if tiers.on_ci() and tier in tiers.REQUIRED_ON_CI:
            pytest.fail(f"tier '{tier}' must run on CI but cannot: {why}", pytrace=False)
        pytest.skip(f"tier '{tier}': {why}")


@pytest.fixture(scope="session", autouse=True)
def host_left_as_found() -> Iterator[None]:
    """Snapshot the live host's tunables before the session and compare after it."""
    if tiers.missing("kernel") is not None:
        yield
        return
    before = hostguard.snapshot()
    yield
    after = hostguard.snapshot()
    diff = hostguard.diff(before, after)
    if diff:
        pytest.fail("the test suite changed host values and did not restore them:\n" + "\n".join(diff),
                    pytrace=False)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running the real CLI in a subprocess without touching /var/lib/hosttune."""
    env = dict(os.environ)
    env["HOSTTUNE_STATE_DIR"] = str(tmp_path / "state")
    return env


@pytest.fixture
def host_tree(tmp_path: Path) -> Callable[[str], HostPaths]:
    def make(name: str = "server") -> HostPaths:
        return make_tree(name, tmp_path / f"host-{name}")
    return make


@pytest.fixture
def host(request: pytest.FixtureRequest, host_tree: Callable[[str], HostPaths]) -> HostPaths:
    """A copy of the committed fixture host DEFAULT_HOST, or of the host a test names with
    @pytest.mark.host(name) (a committed fixture host or a scenario built in tests/support/trees.py)."""
    marker = request.node.get_closest_marker("host")
    return host_tree(marker.args[0] if marker else DEFAULT_HOST)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def no_daemon_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop HOSTTUNE_<setting> variables of the outer environment, so DaemonSettings are the test's own."""
    from agent.config import DaemonSettings
    for name in list(os.environ):
        if name.startswith("HOSTTUNE_") and name.lower().removeprefix("hosttune_").split("__")[0] in \
                DaemonSettings.model_fields:
            monkeypatch.delenv(name)

