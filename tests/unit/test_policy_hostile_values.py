"""The hostile-policy corpus of policy VALUES (tests/fixtures/hostile-policies/values-*.yaml), each loaded and
applied on copies of every committed fixture host: refused as bad input (exit 2) naming the file, the line and
the field, with the message the file's `# expect:` line names, and the host tree byte for byte as it was.

Dangerous sysctls, hugepage pools larger than memory, absurd integers, and strings shaped to break out of a kernel
file or a udev rule. The corpus runner of the loader slice pushes the same files through the CLI and the API.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from agent.commands.tuning import located
from agent.errors import InputError
from agent.hostfs import HostPaths
from agent.inspect import collect
from agent.inspect.models import HostFacts
from agent.policy.loader import LoadedPolicy, load_policy
from agent.tuning import api
from agent.tuning.state import StateDir
from tests.support.trees import FIXTURE_HOSTS, make_tree, tree_hash

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "hostile-policies"
FILES = sorted(CORPUS.glob("values-*.yaml"))
SCENARIOS = sorted(p.name for p in FIXTURE_HOSTS.iterdir() if (p / "sys").is_dir())


@dataclass
class Host:
    root: Path
    paths: HostPaths
    facts: HostFacts


@pytest.fixture(scope="module", params=SCENARIOS)
def fixture_host(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    root = tmp_path_factory.mktemp("hostile") / request.param
    paths = make_tree(request.param, root)
    yield Host(root, paths, collect(paths))


def expectation(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: the first line must be '# expect: <substring>'"
    return first.removeprefix("# expect: ")


def test_corpus_covers_every_family() -> None:
    stems = {p.stem for p in FILES}
    for family in ("sysctl-denied-core-pattern", "sysctl-denied-modprobe", "sysctl-denied-poweroff-cmd",
                   "sysctl-denied-usermodehelper", "sysctl-denied-suid-dumpable", "sysctl-not-allowed-hostname",
                   "hugepages-global-2m", "hugepages-global-1g", "hugepages-per-node", "hugepages-computed",
                   "hugepages-2m-and-1g-together", "hugepages-absurd-count", "cpu-governor-newline",
                   "cpu-epp-newline", "block-scheduler-udev-injection", "block-name-udev-injection"):
        assert f"values-{family}" in stems
    for path in FILES:
        assert f"name: {path.stem}\n" in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_hostile_value_is_refused_and_nothing_is_written(fixture_host: Host, tmp_path: Path, path: Path) -> None:
    before = tree_hash(fixture_host.root)
    loaded: LoadedPolicy | None = None
    with pytest.raises(InputError) as e:
        loaded = load_policy(path, fixture_host.facts, search_path=[CORPUS])
        with located(loaded):
            api.apply_policy(loaded.policy, fixture_host.paths, StateDir(tmp_path / "state"),
                             facts=fixture_host.facts)
    err = e.value
    assert expectation(path) in err.message, str(err)
    assert err.exit_code == 2
    assert err.path == str(path) and err.line is not None and err.line >= 3, str(err)
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert err.field is not None and err.field.split(".")[0] in doc, str(err)
    for key in doc.get("sysctl", {}):  # the refusal names the sysctl key (escaped when it holds a newline)
        assert key in str(err) or repr(key)[1:-1] in str(err), str(err)
    assert tree_hash(fixture_host.root) == before


@pytest.mark.parametrize("stem", ["values-sysctl-denied-core-pattern", "values-hugepages-2m-and-1g-together",
                                  "values-cpu-governor-newline"])
@pytest.mark.parametrize("command", ["plan", "apply"])
@pytest.mark.process
def test_cli_exits_2_naming_file_line_and_field(tmp_path: Path, stem: str, command: str) -> None:
    root = tmp_path / "host"
    paths = make_tree("server-2s-8gpu", root)
    before = tree_hash(root)
    path = CORPUS / f"{stem}.yaml"
    args = [sys.executable, "-m", "agent", command, str(path), "--procfs", str(paths.procfs), "--sysfs",
            str(paths.sysfs), "--rootfs", str(paths.rootfs), "--state-dir", str(tmp_path / "state")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{path}:" in proc.stderr and expectation(path) in proc.stderr
    assert tree_hash(root) == before
