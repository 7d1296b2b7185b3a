"""plan / apply / verify / revert through the REST API on a fixture host tree (a copy per test), the error shape,
bounded bodies and the audit log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import DaemonSettings
from agent.hostfs import HostPaths
from tests.support.daemon_fixtures import ROUND_TRIP_POLICY, MainThreadClient, main_thread_client, settings_for
from tests.support.trees import tree_state

pytestmark = pytest.mark.usefixtures("no_daemon_env_overrides")


@pytest.fixture
def settings(host: HostPaths, tmp_path: Path) -> DaemonSettings:
    return settings_for(host, tmp_path, api={"max_body_bytes": 4096})


@pytest.fixture
def client(settings: DaemonSettings) -> Iterator[MainThreadClient]:
    with main_thread_client(settings) as c:
        yield c


def audit_records(settings: DaemonSettings) -> list[dict[str, Any]]:
    return [json.loads(line) for line in settings.audit_path.read_text().splitlines()]


def read(host: HostPaths, *parts: str) -> str:
    return host.procfs.parent.joinpath(*parts).read_text()


@pytest.mark.host("server")
def test_plan_apply_verify_revert_round_trip(client: MainThreadClient, host: HostPaths) -> None:
    root = host.procfs.parent
    before = tree_state(root)
    body = {"yaml": ROUND_TRIP_POLICY}

    plan = client.post("/v1/plan", json=body)
    assert plan.status_code == 200, plan.text
    changes = {c["target"]: c for c in plan.json()["changes"]}
    assert changes["vm.swappiness"]["current"] == "60" and changes["vm.swappiness"]["action"] == "change"
    assert plan.json()["counts"]["change"] == 3
    assert tree_state(root) == before, "plan wrote to the host"

    applied = client.post("/v1/apply", json=body)
    assert applied.status_code == 200, applied.text
    assert applied.json()["changed"] == 3
    # The host files hold the policy's values, read here independently of the engine.
    assert read(host, "proc/sys/vm/swappiness").strip() == "7"
    assert "[never]" in read(host, "sys/kernel/mm/transparent_hugepage/enabled")
    assert read(host, "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").strip() == "16"

    status = client.get("/v1/status").json()
    assert status["applied"]["policy"] == "api-round-trip" and status["interrupted"] is False
    verify = client.get("/v1/verify").json()
    assert verify["ok"] is True and verify["drifted"] == []

    # Drift made behind hosttune's back shows up in /v1/verify.
    (host.procfs / "sys/vm/swappiness").write_text("33\n")
    verify = client.get("/v1/verify").json()
    assert verify["ok"] is False and [d["target"] for d in verify["drifted"]] == ["vm.swappiness"]

    again = client.post("/v1/apply", json=body).json()
    assert again["changed"] == 1  # only the drifted tunable is written again

    history = client.get("/v1/changes").json()
    assert [h["kind"] for h in history[:2]] == ["apply", "apply"] and history[0]["writes"] == 1

    reverted = client.post("/v1/revert")
    assert reverted.status_code == 200, reverted.text
    assert reverted.json()["ok"] is True
    assert tree_state(root) == before, "revert did not restore the tree byte for byte"
    assert client.get("/v1/status").json()["applied"] is None


def test_inline_json_policy_goes_through_the_same_loader(client: MainThreadClient, host: HostPaths) -> None:
    r = client.post("/v1/plan", json={"policy": {"name": "j", "sysctl": {"vm.swappiness": 5}}})
    assert r.status_code == 200, r.text
    assert [c["target"] for c in r.json()["changes"]] == ["vm.swappiness"]


def test_named_policy_from_the_search_path(client: MainThreadClient) -> None:
    names = {p["name"] for p in client.get("/v1/policies").json()}
    assert "base" in names
    shown = client.get("/v1/policies/base")
    assert shown.status_code == 200 and shown.json()["policy"]["name"] == "base"
    assert client.get("/v1/policies/no-such-policy").status_code == 404
    assert client.post("/v1/plan", json={"name": "no-such-policy"}).json()["error"] == "not_found"
    assert client.get("/v1/policies/..%2Fetc").status_code in (404, 422)


def test_bad_inline_policy_names_line_and_field_and_writes_nothing(client: MainThreadClient, host: HostPaths) -> None:
    root = host.procfs.parent
    before = tree_state(root)
    bad = "name: bad\nsysctl:\n  vm.swappiness: 7\nthp:\n  enabled: sometimes\n"
    r = client.post("/v1/apply", json={"yaml": bad})
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid_input"
    assert body["where"] == {"path": "request body", "line": 5, "field": "thp.enabled"}
    assert body["detail"].startswith("request body:5: thp.enabled:")
    # A sysctl the host does not have: refused at plan time, located in the body too.
    r = client.post("/v1/apply", json={"yaml": "name: bad\nsysctl:\n  vm.swappiness: 7\n  vm.nope: 1\n"})
    assert r.status_code == 422 and r.json()["where"]["line"] == 4 and r.json()["where"]["field"] == "sysctl.vm.nope"
    assert tree_state(root) == before


@pytest.mark.parametrize("body", [
    {}, {"name": "a", "yaml": "b"}, {"name": "../etc/passwd"}, {"name": "x", "extra": 1}, {"yaml": ""},
    {"policy": "not an object"},
])
def test_malformed_requests_are_422_with_a_field(client: MainThreadClient, body: dict[str, Any]) -> None:
    r = client.post("/v1/plan", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request" and r.json()["where"]["field"].startswith("body")


def test_oversized_body_is_413_and_audited(client: MainThreadClient, settings: DaemonSettings) -> None:
    big = {"yaml": "name: big\n" + "# padding\n" * 1000}
    r = client.post("/v1/plan", json=big)
    assert r.status_code == 413 and r.json()["error"] == "request_too_large"
    chunked = client.post("/v1/plan", content=iter([b"{" + b" " * 3000, b" " * 3000 + b"}"]),
                          headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    records = audit_records(settings)
    assert [r["status"] for r in records] == [413, 413]
    assert records[0]["outcome"] == "rejected" and records[0]["route"] == "/v1/plan"


def test_audit_log_records_every_mutation_and_no_read(client: MainThreadClient, settings: DaemonSettings) -> None:
    client.get("/v1/status")
    client.post("/v1/apply", json={"yaml": ROUND_TRIP_POLICY})
    client.post("/v1/revert")
    client.post("/v1/apply", json={"name": "base"}, headers={"Authorization": "Bearer nope"})
    records = audit_records(settings)
    assert [(r["method"], r["route"], r["outcome"]) for r in records] == [
        ("POST", "/v1/apply", "ok"), ("POST", "/v1/revert", "ok"), ("POST", "/v1/apply", "denied")]
    assert records[0]["detail"] == {"policy": "inline-yaml", "changed": 3}
    assert records[1]["detail"] == {"restored": 3}
    for r in records:
        assert r["client"] == "testclient:50000" and r["time"].endswith("Z")
    assert (settings.audit_path.stat().st_mode & 0o777) == 0o600


def test_worker_controller_and_telemetry_without_those_parts(client: MainThreadClient) -> None:
    assert client.get("/v1/worker").json()["state"] == "disabled"
    assert client.post("/v1/worker/restart").status_code == 503
    assert client.get("/v1/controller").json() == {"enabled": False, "reason": "no worker runs",
                                                   "decisions": []}
    r = client.get("/v1/telemetry")
    assert r.status_code == 503 and r.json()["error"] == "unavailable"


@pytest.mark.host("server")
def test_host_facts_come_from_the_fixture_tree(client: MainThreadClient, host: HostPaths) -> None:
    facts = client.get("/v1/host").json()
    # The "server" tree has 4 CPUs on 2 nodes (conftest.build_server) — not this machine's topology.
    assert facts["cpu"]["online_cpus"] == [0, 1, 2, 3]
    assert len(facts["cpu"]["numa_nodes"]) == 2
