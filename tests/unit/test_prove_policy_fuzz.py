"""Random and adversarial policies, taken all the way to the host: load -> plan -> apply -> revert on a copy of the
8-GPU fixture server (tests/fixtures/hosts/server-2s-8gpu, GPUs through the NVML simulator).

What must hold for every generated policy (issue 10, "policy fuzzing"):
- nothing but InputError / HostError ever escapes (no crash of the validator, the planner or a tuner);
- every host write that reaches the single low-level writer (agent.tuning.hostfile.write_raw / remove) lands on
  an allow-listed path inside the tree: proc/sys/**, sys/kernel/mm/**, sys/devices/system/**,
  sys/block/*/queue/**, <rootfs>/etc/udev/rules.d/* — checked on the lexical path and on the resolved one (a
  block queue resolves to the queue directory of the device that sys/block/<dev> links to);
- the whole tree, compared byte for byte, is back as it was after revert, simulated GPU state included (this
  found the GPU tuner's lock ledger, <rootfs>/run/hosttune/gpu-locks-<boot>.json, left behind with no lock in
  it: it is now removed with its last lock).

tests/unit/test_policy_fuzz.py fuzzes the loader alone with arbitrary YAML; this one aims generated policies
at the tuners: half hostile (strings where a tuner turns policy text into a path or a value), half mostly valid
so that many examples really write and revert.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.errors import HostError, InputError
from agent.gpu import nvml
from agent.gpu.simulator import library as nvml_sim
from agent.hostfs import HostPaths
from agent.inspect import collect
from agent.policy.loader import load_policy
from agent.tuning import api, hostfile
from agent.tuning.state import StateDir
from tests.support.trees import FIXTURE_HOSTS, make_tree, tree_state

SCENARIO = "server-2s-8gpu"
# relative to the tree root; the udev rules directory is added per host (it lives under the --rootfs root)
ALLOWED = ["proc/sys/*", "sys/kernel/mm/*", "sys/devices/system/*", "sys/block/*/queue/*"]

HOSTILE = ["../../../../etc/passwd", "../x", "/etc/shadow", "a/../../b", "*", "**", "nvme*", "loop?", "[a-z]*",
           "..", ".", "", " ", "x\ny", "x\0y", "$(reboot)", "`id`", "; rm -rf /", "%s%n", "é", "\u202e", "a" * 300]
SYSCTL_KEYS = ["vm.swappiness", "vm.max_map_count", "vm.dirty_ratio", "vm.nr_hugepages", "kernel.numa_balancing",
               "fs.file-max", "net.core.somaxconn", "vm.nope", "kernel.core_pattern", "vm..x", "vm/swappiness",
               "../../etc.passwd", "vm.swappiness/../../x", "a.b", "kernel.osrelease", "net.ipv4.ip_local_port_range"]

NO_KEYS: dict[str, st.SearchStrategy[Any]] = {}  # typed, so mypy can infer the dicts that are all optional


def pool_key(spec: Any) -> tuple[Any, Any]:
    return spec["size"], spec.get("node")


hostile = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=10))
small_ints = st.integers(min_value=-3, max_value=1 << 21)
sysctl_values = st.one_of(small_ints, st.sampled_from([">=10", "<=0", ">=99999999", "<=-5", "60", "x", "1 2", ""]),
                          hostile)
hugepages = st.lists(st.fixed_dictionaries(
    {"size": st.sampled_from(["2M", "1G"]), "count": st.integers(min_value=0, max_value=1 << 20)},
    optional={"node": st.integers(min_value=0, max_value=4)}), max_size=3)
thp = st.fixed_dictionaries(NO_KEYS, optional={
    "enabled": st.sampled_from(["always", "madvise", "never", "[always]", "x"]),
    "defrag": st.sampled_from(["always", "defer", "defer+madvise", "madvise", "never", "bogus"])})
cpu = st.fixed_dictionaries(NO_KEYS, optional={
    "governor": st.one_of(st.sampled_from(["performance", "powersave", "schedutil"]), hostile),
    "energy_performance_preference": st.one_of(st.sampled_from(["performance", "balance_power"]), hostile)})
block = st.lists(st.fixed_dictionaries(
    {"match": st.fixed_dictionaries(NO_KEYS, optional={
        "name": st.one_of(st.sampled_from(["nvme*", "loop*", "*", "nvme0n1"]), hostile),
        "kind": st.sampled_from(["nvme", "loop", "sata", "virtio", "../x"]),
        "model": st.sampled_from([".*", "Samsung.*", "(", "x"]),
        "rotational": st.booleans()})},
    optional={"read_ahead_kb": st.integers(min_value=-1, max_value=(1 << 20) + 1),
              "scheduler": st.one_of(st.sampled_from(["none", "mq-deadline", "kyber", "bfq"]), hostile),
              "nr_requests": st.integers(min_value=0, max_value=(1 << 16) + 1),
              "udev_rule": st.booleans()}), max_size=3)
clock = st.one_of(st.sampled_from(["max", "base", "90%", "0%", "150%", "-5%", "x%"]), hostile,
                  st.fixed_dictionaries({"min_mhz": st.integers(min_value=0, max_value=4000),
                                         "max_mhz": st.integers(min_value=0, max_value=4000)}))
gpu = st.lists(st.fixed_dictionaries(NO_KEYS, optional={
    "select": st.one_of(st.just({"all": True}), st.fixed_dictionaries({"index": st.integers(min_value=0,
                                                                                            max_value=9)}),
                        st.fixed_dictionaries({"name": st.one_of(st.just("*H100*"), hostile)}),
                        st.fixed_dictionaries({"uuid": hostile})),
    "locked_clocks": clock, "memory_locked_clocks": clock,
    "power_limit_w": st.one_of(st.integers(min_value=-1, max_value=2000), st.sampled_from(["90%", "200%", "w"])),
    "persistence_mode": st.booleans()}), max_size=2)
cmdline = st.dictionaries(st.one_of(st.sampled_from(["hugepagesz", "isolcpus", "quiet", "a b"]), hostile),
                          st.one_of(st.none(), st.sampled_from(["1G", "2-3", "on"]), hostile), max_size=3)
policies = st.fixed_dictionaries({"name": st.sampled_from(["fuzz", "bad name"])}, optional={
    "sysctl": st.dictionaries(st.one_of(st.sampled_from(SYSCTL_KEYS), hostile), sysctl_values, max_size=4),
    "hugepages": hugepages, "thp": thp, "cpu": cpu, "block": block, "gpu": gpu, "kernel_cmdline": cmdline})

# Mostly valid policies, so that many examples get past the validator and really write (and revert).
SANE: dict[str, st.SearchStrategy[Any]] = {
    "sysctl": st.dictionaries(st.sampled_from(SYSCTL_KEYS[:7]),
                              st.one_of(st.integers(min_value=0, max_value=100000),
                                        st.sampled_from([">=10", "<=0", ">=4096", "<=5"])), max_size=4),
    "hugepages": st.lists(st.fixed_dictionaries(
        {"size": st.sampled_from(["2M", "1G"]), "count": st.integers(min_value=0, max_value=64)},
        optional={"node": st.integers(min_value=0, max_value=1)}), max_size=2, unique_by=pool_key),
    "thp": st.fixed_dictionaries(NO_KEYS, optional={"enabled": st.sampled_from(["always", "madvise", "never"]),
                                                    "defrag": st.sampled_from(["always", "defer", "never"])}),
    "cpu": st.fixed_dictionaries(NO_KEYS, optional={"governor": st.sampled_from(["performance", "powersave"]),
                                                    "energy_performance_preference": st.sampled_from(
                                                        ["performance", "balance_power"])}),
    "block": st.lists(st.fixed_dictionaries(
        {"match": st.fixed_dictionaries({"name": st.sampled_from(["nvme*", "loop*", "*", "nvme0n1", "../*"])})},
        optional={"read_ahead_kb": st.integers(min_value=0, max_value=1 << 14),
                  "scheduler": st.sampled_from(["none", "mq-deadline", "kyber"]),
                  "nr_requests": st.integers(min_value=1, max_value=2048), "udev_rule": st.booleans()}),
        max_size=2),
    "gpu": st.lists(st.fixed_dictionaries(NO_KEYS, optional={
        "select": st.one_of(st.just({"all": True}), st.fixed_dictionaries({"index": st.integers(0, 8)})),
        "locked_clocks": st.sampled_from(["max", "base", "90%"]), "memory_locked_clocks": st.just("max"),
        "power_limit_w": st.one_of(st.integers(min_value=200, max_value=700), st.just("90%")),
        "persistence_mode": st.booleans()}), max_size=2)}
sane = st.fixed_dictionaries({"name": st.just("fuzz")}, optional=SANE)


def allowed(rel: str, dirs: frozenset[str] = frozenset()) -> bool:
    """`rel` matches the allow-list, or its directory is one of `dirs` (the rules dir, resolved block queues)."""
    if rel.startswith(".."):
        return False
    return any(fnmatch.fnmatch(rel, pattern) for pattern in ALLOWED) or os.path.dirname(rel) in dirs


class Host:
    """One copy of the fixture server for a whole hypothesis run: each example applies, reverts, and must leave
    it byte for byte as found (which is itself part of what is checked)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: HostPaths = make_tree(SCENARIO, root)
        rules = self.paths.root("etc/udev/rules.d")
        rules.mkdir(parents=True)  # so `udev_rule: true` really writes a rule file
        self.facts = collect(self.paths, nvml=nvml.open_nvml(root / "nvml.json"))
        self.before = tree_state(root)
        self.gpu_before = self.gpu_state()
        self.writes: list[str] = []
        self.dirs = frozenset({self.rel(rules)[0], *(self.rel(q)[1] for q in (root / "sys/block").glob("*/queue"))})

    def changed_after_revert(self) -> list[str]:
        """Tree paths that differ from the snapshot (the GPU tuner's lock ledger under <rootfs>/run/hosttune
        included: with no lock left it is removed)."""
        now = tree_state(self.root)
        return sorted(k for k in now.keys() | self.before.keys() if now.get(k) != self.before.get(k))

    def gpu_state(self) -> dict[str, Any]:
        sim = nvml_sim.installed()
        assert sim is not None
        with sim._state(write=False) as state:
            return copy.deepcopy(state)

    def rel(self, path: Path | str) -> tuple[str, str]:
        """(lexical, resolved) path relative to the tree root."""
        p = Path(path)
        lexical = os.path.relpath(os.path.normpath(p), self.root)
        resolved = os.path.relpath(os.path.realpath(p), os.path.realpath(self.root))
        return lexical, resolved


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    if not (FIXTURE_HOSTS / SCENARIO / "sys").is_dir():
        pytest.skip(f"fixture host {SCENARIO} is not committed")
    try:
        yield Host(tmp_path_factory.mktemp("fuzzhost") / "h")
    finally:
        nvml_sim.uninstall()


@pytest.fixture(scope="module")
def recorded(host: Host) -> Iterator[Host]:
    """Every call into the single low-level writer is recorded (and still performed)."""
    real_write, real_remove = hostfile.write_raw, hostfile.remove

    def write_raw(path: Path, data: str, *, create: bool = False) -> None:
        host.writes.append(str(path))
        real_write(path, data, create=create)

    def remove(path: Path) -> None:
        host.writes.append(str(path))
        real_remove(path)

    mp = pytest.MonkeyPatch()
    mp.setattr(hostfile, "write_raw", write_raw)
    mp.setattr(hostfile, "remove", remove)
    try:
        yield host
    finally:
        mp.undo()


def run_policy(host: Host, doc: dict[str, Any]) -> str:
    """load -> plan -> apply -> revert. Returns how far it got; only InputError/HostError may stop it."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        state = StateDir(Path(d) / "state")
        stage = "load"
        try:
            policy = load_policy(path, host.facts, search_path=[]).policy
            stage = "plan"
            api.plan_policy(policy, host.paths, state=state, facts=host.facts)
            assert not host.writes, "plan wrote to the host"
            stage = "apply"
            api.apply_policy(policy, host.paths, state, facts=host.facts)
            stage = "applied"
        except (InputError, HostError) as e:
            assert "\n" not in str(e).strip(), e
        finally:
            if state.path.exists():
                result = api.revert(state)
                assert result.ok, result
        return stage


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(policies, sane))
def test_fuzzed_policy_writes_only_allow_listed_paths_and_reverts(recorded: Host, doc: dict[str, Any]) -> None:
    host = recorded
    host.writes.clear()
    event(f"stopped at: {run_policy(host, doc)}")  # --hypothesis-show-statistics shows how far examples got
    event(f"host writes: {'some' if host.writes else 'none'}")
    for written in host.writes:
        lexical, resolved = host.rel(written)
        assert allowed(lexical, host.dirs) and allowed(resolved, host.dirs), f"write outside the allow-list: {written}"
    assert host.changed_after_revert() == [], "revert did not restore the tree"
    assert host.gpu_state() == host.gpu_before


def test_allow_list_is_not_vacuous(recorded: Host) -> None:
    """A policy that touches every tuner really writes through the recorded writer, to allow-listed paths only,
    and a path outside the list is rejected by the same check (so the fuzz test's assertion can fail)."""
    host = recorded
    host.writes.clear()
    doc = {"name": "all", "sysctl": {"vm.swappiness": 1}, "hugepages": [{"size": "2M", "count": 16}],
           "thp": {"enabled": "always"}, "block": [{"match": {"name": "nvme*"}, "read_ahead_kb": 4096,
                                                    "udev_rule": True}],
           "gpu": [{"select": {"all": True}, "power_limit_w": 600, "persistence_mode": True}]}
    assert run_policy(host, doc) == "applied"
    rels = {host.rel(w)[0] for w in host.writes}
    assert any(r.startswith("proc/sys/vm/") for r in rels)
    assert any(r.startswith("sys/kernel/mm/transparent_hugepage/") for r in rels)
    assert any(r.endswith("etc/udev/rules.d/60-hosttune-block-0.rules") for r in rels)
    assert any(r.startswith("sys/block/nvme") for r in rels)
    assert all(allowed(r, host.dirs) for r in rels), rels
    assert not allowed("etc/passwd") and not allowed("../x/proc/sys/vm/swappiness") and not allowed("sys/block/x")
    assert host.changed_after_revert() == []
    assert host.gpu_state() == host.gpu_before


@pytest.mark.parametrize("value", ["\u0100", "60\n61", "x\x00y", "caf\u00e9"])
def test_sysctl_string_value_outside_printable_ascii_is_refused_at_load(tmp_path: Path, value: str) -> None:
    """Found by the fuzzing above: a non-latin-1 value passed validation and crashed the writer after journaling."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "sysctl": {"vm.swappiness": value}}, allow_unicode=True))
    with pytest.raises(InputError) as e:
        load_policy(path, None, search_path=[])
    assert e.value.path == str(path) and e.value.line is not None
    assert "printable ASCII" in str(e.value)
