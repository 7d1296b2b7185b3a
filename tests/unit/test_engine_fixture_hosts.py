"""The shipped policies on every committed scenario host (tests/fixtures/hosts/*): plan writes nothing, apply
then a second apply writes nothing, verify holds, revert restores the tree byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.inspect import collect
from agent.policy.loader import load_policy
from agent.tuning import api
from agent.tuning.state import StateDir
from tests.support.trees import FIXTURE_HOSTS, make_tree, tree_state

SCENARIOS = sorted(p.name for p in FIXTURE_HOSTS.iterdir() if (p / "sys").is_dir()) if FIXTURE_HOSTS.is_dir() else []
POLICIES = ["base", "llm-cpu-throughput", "llm-gpu-throughput", "llm-latency"]


@pytest.mark.skipif(not SCENARIOS, reason="no committed scenario trees under tests/fixtures/hosts")
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("policy_name", POLICIES)
def test_shipped_policy_round_trip(tmp_path: Path, scenario: str, policy_name: str) -> None:
    root = tmp_path / scenario
    paths = make_tree(scenario, root)
    facts = collect(paths)
    policy = load_policy(policy_name, facts).policy
    state = StateDir(tmp_path / "state")
    before = tree_state(root)

    plan = api.plan_policy(policy, paths, state=state, facts=facts)
    assert tree_state(root) == before
    assert all(c.action in ("change", "ok", "not_applicable", "unsupported") for c in plan.changes)

    result = api.apply_policy(policy, paths, state, facts=facts)
    changed = {k for k, v in tree_state(root).items() if before.get(k) != v}
    assert result.writes == len(plan.writes) == len(changed)
    assert api.apply_policy(policy, paths, state, facts=facts).writes == 0
    assert api.verify(state).ok
    assert api.revert(state).ok
    assert tree_state(root) == before
