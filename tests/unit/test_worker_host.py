"""worker.host: an IP literal or a host name (never a flag, never a space), and loopback unless the daemon config
(not the policy) sets worker.allow_remote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import DaemonSettings
from agent.errors import InputError
from agent.policy.loader import load_policy
from agent.policy.model import WorkerSpec
from agent.worker.prepare import prepare_worker
from tests.support.worker_facts import one_node_vm

COMMAND = ["python3", "-m", "http.server"]


@pytest.mark.parametrize("host", ["--foo", "-h", "127.0.0.1 --api-key x", "a b", "", "x" * 300, "host_name",
                                  "1.2.3.4/8", "[::1]", "example.com."])
def test_bad_host_shapes_are_refused(host: str) -> None:
    with pytest.raises(ValidationError, match="not an IP address or a host name"):
        WorkerSpec(engine="command", argv=COMMAND, host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "10.0.0.5", "fe80::1", "worker-1.example.com"])
def test_good_host_shapes_pass_the_model(host: str) -> None:
    assert WorkerSpec(engine="command", argv=COMMAND, host=host).host == host


def test_policy_with_flag_as_host_names_file_line_and_field(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\nworker:\n  engine: command\n  argv: [python3, -m, http.server]\n"
                      "  host: --api-key\n")
    with pytest.raises(InputError) as err:
        load_policy(policy, search_path=[tmp_path])
    assert err.value.field == "worker.host" and err.value.line == 5 and err.value.path == str(policy)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_are_allowed_by_default(host: str) -> None:
    spec = WorkerSpec(engine="command", argv=COMMAND, host=host)
    launch = prepare_worker(spec, one_node_vm()).build(spec)
    assert launch.argv[-len(COMMAND):] == COMMAND


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "worker.example.com"])
def test_non_loopback_host_needs_allow_remote(host: str) -> None:
    spec = WorkerSpec(engine="command", argv=COMMAND, host=host)
    with pytest.raises(InputError, match=r"worker\.allow_remote") as err:
        prepare_worker(spec, one_node_vm())
    assert err.value.field == "worker.host"
    prepared = prepare_worker(spec, one_node_vm(), allow_remote=True)
    assert prepared.build(spec).base_url.startswith("http://")


def test_a_rebuilt_spec_is_checked_too() -> None:
    """A restart with a new spec (reload, controller) goes through build(): it cannot slip a remote host in."""
    prepared = prepare_worker(WorkerSpec(engine="command", argv=COMMAND), one_node_vm())
    with pytest.raises(InputError, match=r"worker\.allow_remote"):
        prepared.build(WorkerSpec(engine="command", argv=COMMAND, host="0.0.0.0"))


def test_allow_remote_is_a_daemon_setting_defaulting_off() -> None:
    assert DaemonSettings().worker.allow_remote is False
    assert DaemonSettings.model_validate({"worker": {"allow_remote": True}}).worker.allow_remote is True


@pytest.mark.process
def test_cli_worker_run_refuses_a_remote_host_with_file_line(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\nworker:\n  engine: command\n  argv: [python3, -m, http.server]\n"
                      "  host: 0.0.0.0\n")
    r = subprocess.run([sys.executable, "-m", "agent", "worker", "run", str(policy), "--state-dir",
                        str(tmp_path / "state")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"{policy}:5: worker.host" in r.stderr and "allow_remote" in r.stderr


def test_daemon_reload_refuses_a_remote_worker_host_before_restarting(tmp_path: Path) -> None:
    from agent.daemon.services import Services

    class Sup:
        restarted = False

        def restart(self, spec: WorkerSpec, reason: str) -> None:
            self.restarted = True

    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\nworker:\n  engine: command\n  argv: [python3, -m, http.server]\n  host: 10.0.0.5\n")
    loaded = load_policy(policy, search_path=[tmp_path])
    services = Services(DaemonSettings(state_dir=tmp_path / "state"))
    sup = Sup()
    services.stack.supervisor = sup
    with pytest.raises(InputError, match=r"worker\.allow_remote") as err:
        services.stack.respawn_worker(loaded)
    assert (err.value.path, err.value.line, err.value.field) == (str(policy), 5, "worker.host")
    assert not sup.restarted
