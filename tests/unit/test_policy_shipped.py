"""The shipped policies: each validates offline, resolves on every host shape, does what its comments say there,
explains every setting, stays safe for the CI VM, and matches the published JSON schema."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from agent.inspect.models import HostFacts
from agent.model_files import default_model_path
from agent.policy.loader import REPO_POLICIES, list_policies, load_policy
from agent.policy.schema import user_policy_schema
from tests.support.policy_hosts import HOSTS, ci_vm

REPO = Path(__file__).resolve().parents[2]
POLICY_DIR = REPO / "policies"
SHIPPED = sorted(p.stem for p in POLICY_DIR.glob("*.yaml"))
REQUIRED = {"base", "llm-cpu-throughput", "llm-gpu-throughput", "llm-latency"}
FIXTURE_HOSTS = REPO / "tests" / "fixtures" / "hosts"
HOSTTUNE = Path(sys.executable).parent / "hosttune"


def test_required_policies_are_shipped_and_found_by_the_search_path() -> None:
    assert set(SHIPPED) >= REQUIRED
    assert POLICY_DIR == REPO_POLICIES
    found = {i.name: i for i in list_policies()}
    for name in REQUIRED:
        assert found[name].description, f"{name} has no description"
        if name != "base":
            assert found[name].extends == ["base"]


@pytest.mark.parametrize("name", SHIPPED)
def test_validates_offline(name: str) -> None:
    loaded = load_policy(POLICY_DIR / f"{name}.yaml", None)
    assert loaded.policy.name == name
    assert loaded.chain[-1] == POLICY_DIR / f"{name}.yaml"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_setting_has_a_comment(name: str) -> None:
    """Each line that sets a value has a comment right above it (or on it): the reason for the setting."""
    lines = (POLICY_DIR / f"{name}.yaml").read_text().splitlines()
    setting = re.compile(r"^\s*(- )?[A-Za-z0-9_.\-]+:\s*[^\s#]")
    missing = []
    for i, line in enumerate(lines):
        if not setting.match(line) or re.match(r"^(name|description|extends):", line):
            continue
        above = next((prev for prev in reversed(lines[:i]) if prev.strip()), "")
        if "#" not in line and not above.lstrip().startswith("#"):
            missing.append(f"{name}.yaml:{i + 1}: {line.strip()}")
    assert not missing, "settings without a reason:\n" + "\n".join(missing)


@pytest.mark.parametrize("name", SHIPPED)
def test_matches_the_published_schema(name: str) -> None:
    data = yaml.safe_load((POLICY_DIR / f"{name}.yaml").read_text())
    jsonschema.validate(data, user_policy_schema())


def test_schema_rejects_what_the_loader_rejects() -> None:
    schema = user_policy_schema()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "worker": {"thread": 4}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "hugepages": [{"size": "2M", "count": -1}]}, schema)
    jsonschema.validate({"hugepages": [{"size": "2M", "count": "=ceil(model.size_bytes / 2Mi)", "when": "true"}],
                         "sysctl": {"vm.x": {"value": 1, "when": "gpus.count > 0"}}}, schema)


def _numa_balancing_wanted(facts: HostFacts) -> bool:
    return len(facts.cpu.numa_nodes) >= 2


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize("name", SHIPPED)
def test_resolves_on_each_host(name: str, host: str) -> None:
    facts = HOSTS[host]()
    loaded = load_policy(name, facts)
    pol = loaded.policy
    assert not loaded.deferred and all(c.result is not None for c in loaded.conditions)
    # base, inherited by all: swap and mmap limits, the worker.
    assert pol.sysctl["vm.swappiness"] == 1 and pol.sysctl["vm.max_map_count"] == ">=1048576"
    assert ("kernel.numa_balancing" in pol.sysctl) is _numa_balancing_wanted(facts)
    assert pol.worker is not None and pol.worker.engine == "llamacpp" and pol.worker.model == "default"
    assert pol.worker.placement.mode == "auto" and pol.worker.host == "127.0.0.1"
    assert pol.thp is not None and (pol.thp.enabled, pol.thp.defrag) == ("madvise", "defer+madvise")
    assert [b.match.name for b in pol.block] == ["nvme*"]
    if name != "base":
        # Every derived policy pins CPU clocks exactly where a cpufreq driver exists.
        assert (pol.cpu is not None and pol.cpu.governor == "performance") is facts.cpufreq.available
    if name in ("llm-gpu-throughput", "llm-latency"):
        assert bool(pol.gpu) is bool(facts.gpus)
        assert all(g.locked_clocks == "max" and g.persistence_mode for g in pol.gpu)
        assert pol.worker.gpu_layers == (999 if facts.gpus else 0)


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_cpu_throughput_sizes_hugepages_from_the_model(host: str) -> None:
    facts = HOSTS[host]()
    pol = load_policy("llm-cpu-throughput", facts).policy
    size = os.stat(default_model_path()).st_size
    expected = math.ceil(size * 1.1 / (2 * 1024 * 1024))
    wanted = size * 8 <= facts.memory.total_bytes
    assert [(h.size, h.count) for h in pol.hugepages] == ([("2M", expected)] if wanted else [])
    assert pol.worker is not None and pol.worker.threads_batch == facts.cpu.cores // len(facts.cpu.numa_nodes)


def test_small_host_skips_the_hugepage_pool() -> None:
    # 1 GiB of RAM: the bundled 98 MB model is more than 1/8 of it, so no pool is reserved.
    small = ci_vm().model_copy(update={"memory": ci_vm().memory.model_copy(update={"total_bytes": 1 << 29})})
    assert load_policy("llm-cpu-throughput", small).policy.hugepages == []


@pytest.mark.parametrize("name", SHIPPED)
def test_values_are_safe_for_the_ci_vm(name: str) -> None:
    """The kernel tier applies these policies on the CI VM (24 GiB, 2 CPUs) and restores them afterwards."""
    facts = ci_vm()
    pol = load_policy(name, facts).policy
    reserved = sum(h.count * (2 << 20 if h.size == "2M" else 1 << 30) for h in pol.hugepages)
    assert reserved <= facts.memory.total_bytes // 20
    assert not pol.gpu and not pol.kernel_cmdline
    assert all(not k.startswith("net.") or str(v).startswith(">=") for k, v in pol.sysctl.items())


def _fixture_trees() -> list[Path]:
    if not FIXTURE_HOSTS.is_dir():
        return []
    return sorted(d for d in FIXTURE_HOSTS.iterdir() if (d / "proc").is_dir() and (d / "sys").is_dir())


@pytest.mark.slow
@pytest.mark.parametrize("tree", _fixture_trees(), ids=lambda p: p.name)
@pytest.mark.process
def test_every_shipped_policy_resolves_on_fixture_host_trees(tree: Path, tmp_path: Path) -> None:
    """Through the real CLI, with facts read by the real inspector from the committed host trees."""
    args = [str(HOSTTUNE), "policy", "validate", "--json", "--procfs", str(tree / "proc"), "--sysfs",
            str(tree / "sys"), "--rootfs", str(tree)]
    if (tree / "nvml.json").is_file():
        args += ["--nvml-sim", str(tree / "nvml.json")]
    args += [str(POLICY_DIR / f"{n}.yaml") for n in SHIPPED]
    env = {**os.environ, "HOSTTUNE_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(proc.stdout)
    assert [r["valid"] for r in results] == [True] * len(SHIPPED)
    for r in results:
        assert r["facts"].startswith("host") and not r["unevaluated_conditions"] and not r["deferred"]
    assert not (tmp_path / "state").exists()


@pytest.mark.slow
@pytest.mark.parametrize("tree", [t for t in _fixture_trees() if (t / "nvml.json").is_file()], ids=lambda p: p.name)
@pytest.mark.process
def test_gpu_section_follows_the_fixture_hosts_gpus(tree: Path) -> None:
    """llm-gpu-throughput locks clocks exactly on the fixture hosts whose simulated NVML has GPUs."""
    sim = json.loads((tree / "nvml.json").read_text())
    has_gpus = bool(sim.get("gpus"))
    proc = subprocess.run([str(HOSTTUNE), "policy", "show", "llm-gpu-throughput", "--json", "--procfs",
                           str(tree / "proc"), "--sysfs", str(tree / "sys"), "--rootfs", str(tree),
                           "--nvml-sim", str(tree / "nvml.json")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert {c["field"]: c["result"] for c in shown["conditions"]}["gpu.0"] is has_gpus
    assert [g["locked_clocks"] for g in shown["policy"]["gpu"]] == (["max"] if has_gpus else [])
    assert shown["policy"]["worker"]["gpu_layers"] == (999 if has_gpus else 0)
    assert shown["locations"]["gpu"]["file"].endswith("llm-gpu-throughput.yaml")
