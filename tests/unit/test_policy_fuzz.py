"""Random and adversarial YAML never crashes the loader: it loads, or it raises InputError naming the file."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import InputError
from agent.inspect.models import HostFacts
from agent.policy.loader import load_policy
from agent.policy.model import Policy, WorkerSpec
from tests.support.policy_hosts import ci_vm, gpu_server

FACTS: list[HostFacts | None] = [None, ci_vm(), gpu_server()]
FIELD_NAMES = sorted({*Policy.model_fields, *WorkerSpec.model_fields, "when", "value", "match", "select", "size",
                      "count", "node", "enabled", "defrag", "governor", "vm.swappiness", "min_mhz", "max_mhz"})
EXPRESSIONS = ["=cpu.cores", "=ceil(model.size_bytes / 2Mi)", "=gpus.count > 0", "=1 // 0", "=2 ** 4096",
               "=numa.node9.cores", "=nope.x", "=cpu.__class__", "=", "=max()", "=[1, 2]", "='x' + 'y'",
               "=cpu.numa_nodes.0.cpus", "=true if gpus.count else 1"]
CONDITIONS = ["gpus.count > 0", "cpufreq.available", "thp.available and memory.total_bytes >= 64Gi",
              "cpu.vendor == 'GenuineIntel'", "nope", "1 +", "cpu.cores", "true", "numa.count >= 2"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(EXPRESSIONS), st.sampled_from(CONDITIONS),
    st.sampled_from(["2M", "1G", "madvise", "max", ">=10", "<=x", "../../etc/x", "base", "llamacpp", "command"]),
)
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(min_size=1, max_size=8))
yaml_data = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=30,
)
policies = st.fixed_dictionaries({"name": st.sampled_from(["p", "ok-name", "bad name", ""])},
                                 optional={k: yaml_data for k in Policy.model_fields if k != "name"})


def load_text(text: str | bytes, facts: HostFacts | None) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:
            load_policy(path, facts, search_path=[])
        except InputError as e:
            assert e.path is not None and e.path.startswith(d), e  # every error names a file
            assert "\n" not in str(e)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies, st.sampled_from(FACTS))
def test_random_policy_shaped_data(data: dict[str, Any], facts: HostFacts | None) -> None:
    load_text(yaml.safe_dump(data, allow_unicode=True), facts)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("abc:-[]{}&*!|>'\"#%@`\n \t0123456789.=,?")), max_size=120))
def test_random_yaml_text(text: str) -> None:
    load_text(text, ci_vm())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    load_text(data, None)
