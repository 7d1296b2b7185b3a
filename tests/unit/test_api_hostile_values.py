"""Hostile policy values through the REST API (POST /v1/plan and /v1/apply, YAML and JSON bodies): 422 naming the
line and field, and the host tree untouched. The same refusals as the CLI: one rule, in the policy model and the
tuners, whoever submits the policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.hostfs import HostPaths
from tests.support.daemon_fixtures import MainThreadClient, main_thread_client, settings_for
from tests.support.trees import tree_state

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "hostile-policies"
CASES = ["values-sysctl-denied-core-pattern", "values-sysctl-denied-modprobe", "values-sysctl-denied-usermodehelper",
         "values-sysctl-not-allowed-hostname", "values-hugepages-global-2m", "values-hugepages-computed",
         "values-cpu-governor-newline", "values-block-scheduler-udev-injection"]


pytestmark = pytest.mark.usefixtures("no_daemon_env_overrides")


@pytest.fixture
def client(host: HostPaths, tmp_path: Path) -> Iterator[MainThreadClient]:
    # the kernel files an attacker aims at exist here, so a write would show in the tree
    for key in ("kernel/core_pattern", "kernel/modprobe", "kernel/usermodehelper/bset", "kernel/hostname"):
        path = host.proc("sys", key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("core\n")
    with main_thread_client(settings_for(host, tmp_path)) as c:
        yield c


def case(stem: str) -> tuple[str, str, dict[str, Any]]:
    text = (CORPUS / f"{stem}.yaml").read_text(encoding="utf-8")
    return text, text.splitlines()[0].removeprefix("# expect: "), yaml.safe_load(text)


@pytest.mark.parametrize("stem", CASES)
@pytest.mark.parametrize("route", ["/v1/plan", "/v1/apply"])
def test_hostile_values_are_422_and_write_nothing(client: MainThreadClient, host: HostPaths, stem: str,
                                                  route: str) -> None:
    root = host.procfs.parent
    before = tree_state(root)
    text, expect, doc = case(stem)
    for body in ({"yaml": text}, {"policy": doc}):
        r = client.post(route, json=body)
        assert r.status_code == 422, r.text
        answer = r.json()
        assert answer["error"] == "invalid_input" and expect in answer["detail"], answer
        assert answer["where"]["field"].split(".")[0] in doc, answer
        if "yaml" in body:
            assert answer["where"]["path"] == "request body" and answer["where"]["line"] >= 3, answer
    assert tree_state(root) == before
