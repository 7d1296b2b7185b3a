"""Inline policies over the API: validated before anything is written, both forms bounded, a bounded history of
the applied ones under STATE_DIR/api-policies/, and the inline rules (no paths, programs or URLs)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.api.schemas import MAX_POLICY_TEXT
from agent.config import DaemonSettings
from agent.daemon.submitted import KEEP, SUBMITTED_DIR, SubmittedPolicies
from agent.hostfs import HostPaths
from tests.support.daemon_fixtures import ROUND_TRIP_POLICY, MainThreadClient, main_thread_client, settings_for
from tests.support.trees import tree_state


@pytest.fixture
def settings(host: HostPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DaemonSettings:
    for name in list(os.environ):
        if name.startswith("HOSTTUNE_"):
            monkeypatch.delenv(name)
    return settings_for(host, tmp_path, api={"max_body_bytes": 4 << 20})


@pytest.fixture
def client(settings: DaemonSettings) -> Iterator[MainThreadClient]:
    with main_thread_client(settings) as c:
        yield c


def submitted(settings: DaemonSettings) -> list[str]:
    d = settings.state_dir / SUBMITTED_DIR
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_plan_of_an_inline_policy_writes_nothing_under_the_state_dir(client: MainThreadClient,
                                                                      settings: DaemonSettings) -> None:
    for body in ({"yaml": ROUND_TRIP_POLICY}, {"policy": {"name": "p", "sysctl": {"vm.swappiness": 3}}}):
        r = client.post("/v1/plan", json=body)
        assert r.status_code == 200, r.text
    assert submitted(settings) == []


@pytest.mark.parametrize("route", ["/v1/plan", "/v1/apply"])
def test_refused_inline_policy_leaves_nothing(route: str, client: MainThreadClient, settings: DaemonSettings,
                                              host: HostPaths) -> None:
    before = tree_state(host.procfs.parent)
    r = client.post(route, json={"yaml": "name: x\nworker:\n  engine: command\n  argv: [/bin/sh, -c, id]\n"})
    assert r.status_code == 422 and r.json()["where"] == {"path": "request body", "line": 4, "field": "worker.argv"}
    assert submitted(settings) == [] and tree_state(host.procfs.parent) == before


def test_apply_that_fails_at_plan_time_keeps_no_copy(client: MainThreadClient, settings: DaemonSettings) -> None:
    r = client.post("/v1/apply", json={"yaml": "name: x\nsysctl:\n  vm.no_such_knob: 1\n"})
    assert r.status_code == 422, r.text
    assert submitted(settings) == []


def test_applied_inline_policy_is_kept_and_named_by_the_state(client: MainThreadClient,
                                                              settings: DaemonSettings) -> None:
    r = client.post("/v1/apply", json={"yaml": ROUND_TRIP_POLICY})
    assert r.status_code == 200, r.text
    [name] = submitted(settings)
    ref = client.get("/v1/status").json()["daemon"]["policy_ref"]
    assert Path(ref) == settings.state_dir / SUBMITTED_DIR / name and Path(ref).read_text() == ROUND_TRIP_POLICY
    assert (Path(ref).stat().st_mode & 0o777) == 0o600


def test_history_is_bounded_and_keeps_the_applied_body(client: MainThreadClient, settings: DaemonSettings) -> None:
    d = settings.state_dir / SUBMITTED_DIR
    d.mkdir(parents=True)
    for i in range(KEEP + 8):  # older bodies from earlier applies
        old = d / f"request-{i:016x}.yaml"
        old.write_text("name: old\n")
        os.utime(old, (1000 + i, 1000 + i))
    r = client.post("/v1/apply", json={"yaml": ROUND_TRIP_POLICY})
    assert r.status_code == 200, r.text
    names = submitted(settings)
    assert len(names) == KEEP
    assert Path(client.get("/v1/status").json()["daemon"]["policy_ref"]).name in names
    assert f"request-{0:016x}.yaml" not in names  # the oldest went first


def test_prune_never_drops_a_protected_body(tmp_path: Path) -> None:
    store = SubmittedPolicies(tmp_path)
    store.dir.mkdir()
    for i in range(KEEP + 3):
        p = store.dir / f"request-{i:016x}.yaml"
        p.write_text("name: x\n")
        os.utime(p, (1000 + i, 1000 + i))
    applied = store.dir / f"request-{0:016x}.yaml"
    dropped = store.prune(protect=[applied, None])
    assert applied.exists() and len(dropped) == 2
    assert sorted(p.name for p in dropped) == [f"request-{1:016x}.yaml", f"request-{2:016x}.yaml"]


def test_json_policy_nested_500_deep_is_422_not_500(client: MainThreadClient, settings: DaemonSettings) -> None:
    body = '{"policy": ' + '{"a": ' * 500 + "1" + "}" * 500 + "}"
    r = client.post("/v1/plan", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    assert "nested more than" in r.json()["detail"] and r.json()["where"]["field"] == "body.policy"
    assert submitted(settings) == []


def test_json_policy_over_the_text_cap_is_422(client: MainThreadClient) -> None:
    policy = {"name": "big", "description": "x" * (MAX_POLICY_TEXT + 1)}
    r = client.post("/v1/plan", content=json.dumps({"policy": policy}), headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "the limit is" in r.json()["detail"]


def test_inline_extends_path_and_model_oracle_refused(client: MainThreadClient, settings: DaemonSettings) -> None:
    r = client.post("/v1/plan", json={"yaml": "name: x\nextends: /etc/os-release\n"})
    assert r.status_code == 422 and r.json()["where"]["field"] == "extends" and "ID=" not in r.text
    r = client.post("/v1/plan", json={"policy": {"name": "x", "worker": {"model": "/etc/shadow"},
                                                 "sysctl": {"vm.swappiness": "=model.size_bytes % 100"}}})
    assert r.status_code == 422 and r.json()["where"]["field"] == "worker.model"
    assert submitted(settings) == []


def test_kept_bodies_are_reloaded_under_the_inline_rules(settings: DaemonSettings) -> None:
    """Drift re-apply and reload load the applied body again by path: it keeps the rules it was checked under
    (a body planted in api-policies/ does not become a trusted file)."""
    from agent.daemon.services import Services
    from agent.errors import InputError

    services = Services(settings)
    kept = settings.state_dir / SUBMITTED_DIR / "request-00000000000000ff.yaml"
    kept.parent.mkdir(parents=True)
    kept.write_text("name: planted\nworker:\n  binary: /bin/sh\n")
    with pytest.raises(InputError) as e:
        services.tuning.load_policy_ref(str(kept))
    assert e.value.field == "worker.binary"


def test_an_applied_inline_worker_section_starts_nothing(client: MainThreadClient) -> None:
    """Only the daemon config's policy starts a worker (runner.py, reload); an inline body's worker section is
    validated and ignored, so even its allowed fields (port, threads) run nothing."""
    body = {"yaml": ROUND_TRIP_POLICY + "worker:\n  engine: llamacpp\n  port: 9999\n  threads: 1\n"}
    r = client.post("/v1/apply", json=body)
    assert r.status_code == 200, r.text
    assert client.get("/v1/worker").json()["state"] == "disabled"


class _BoundedRLock:
    """The mutation lock, but giving up after a few seconds: a deadlock fails the test instead of hanging it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> _BoundedRLock:
        if not self._lock.acquire(timeout=5):
            raise AssertionError("deadlock: the mutation lock is held by a thread that waits for the main loop")
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_an_inline_apply_does_not_deadlock_the_daemons_main_loop(settings: DaemonSettings) -> None:
    """POST /v1/apply with any inline body took the mutation lock in the request thread, then waited for the main
    loop, whose mutation waited for that lock: the daemon's main loop (signals, reload, every later apply or
    revert) hung forever after one request from a token holder. Now the body is kept, applied and pruned inside
    the one mutation."""
    from fastapi.testclient import TestClient

    from agent.api import create_app
    from agent.daemon.mainloop import MainLoop
    from agent.daemon.services import Services

    services = Services(settings)
    services.tuning.lock = _BoundedRLock()  # type: ignore[assignment]
    loop = MainLoop()
    services.tuning.run_mutation = loop.call
    try:
        with TestClient(create_app(settings, services)) as c:
            c.headers["Authorization"] = "Bearer " + settings.token_path.read_text().strip()
            client = MainThreadClient(c, loop)
            ok = client.post("/v1/apply", json={"yaml": ROUND_TRIP_POLICY})
            assert ok.status_code == 200, ok.text
            bad = client.post("/v1/apply", json={"yaml": "name: x\nsysctl:\n  vm.no_such_knob: 1\n"})
            assert bad.status_code == 422, bad.text
            again = client.post("/v1/apply", json={"name": "llm-cpu-throughput"})
            assert again.status_code in (200, 422), again.text
    finally:
        loop.close()
    assert len(submitted(settings)) == 1
