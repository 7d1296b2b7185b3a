"""The Ansible role and playbooks against a real fleet: three nspawn'ed systemd Debian hosts reached over real SSH
(tests/e2e/fleet.py), real ansible-playbook, the real hosttune wheel installed offline into each host's venv and
the real daemon started by each host's systemd.

Per-host effects are checked with net.core.somaxconn: it belongs to each host's own network namespace, so each
host's value is its own and the machine running the tests keeps its value (checked too).

The tests run in order on one fleet, like an operator would: check mode on fresh hosts, converge, converge again
(nothing changes), check mode for a new policy, then a rollout of that policy that must stop at a host failing
its health gate.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.fleet import Fleet, PlaybookRun, run_playbook

pytestmark = [pytest.mark.ansible, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")
POLICY_A, POLICY_B = 1111, 2222  # net.core.somaxconn in fleet-a / fleet-b; neither is the kernel default (4096)

POLICY_TEXT = """\
name: {name}
description: Fleet test policy - a per-host listen backlog (net.* sysctls are per network namespace).
sysctl:
  net.core.somaxconn: {value}   # why: a value no host starts with, so every change is visible
"""
# fleet-b also advises a boot parameter no kernel has: reboot-only advice the role must report, never act on.
REBOOT_TEXT = """\
kernel_cmdline:
  hosttune_fleet_test: "1"
"""

# Another agent on the host that keeps forcing the old backlog back: the host applies fleet-b, then drifts.
FIGHTER = (
    "import time\n"
    "while True:\n"
    f"    open('/proc/sys/net/core/somaxconn', 'w').write('{POLICY_A}')\n"
    "    time.sleep(0.1)\n"
)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ansible-fleet")


@pytest.fixture(scope="module")
def fleet(fleet_rootfs: Path, work: Path) -> Iterator[Fleet]:
    machine_somaxconn = SOMAXCONN.read_text()
    f = Fleet(rootfs=fleet_rootfs, workdir=work / "fleet", size=3)
    f.start()
    try:
        yield f
    finally:
        f.stop()
    assert SOMAXCONN.read_text() == machine_somaxconn, "the fleet changed the test machine's own sysctl"


@pytest.fixture(scope="module")
def inventory(fleet: Fleet, wheelhouse: Path, work: Path) -> Path:
    inv = work / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    policies = []
    for name, value in (("fleet-a", POLICY_A), ("fleet-b", POLICY_B)):
        path = work / f"{name}.yaml"
        path.write_text(POLICY_TEXT.format(name=name, value=value) + (REBOOT_TEXT if name == "fleet-b" else ""))
        policies.append(str(path))
    fleet.write_inventory(inv / "hosts.ini")
    group_vars = {
        "hosttune_wheelhouse_archive": str(wheelhouse),
        "hosttune_policy_files": policies,
        "hosttune_policy": "fleet-a",
        "hosttune_api_token": secrets.token_urlsafe(24),
        "hosttune_verify_retries": 8,
        "hosttune_verify_delay": 1,
        "hosttune_rollout_soak_seconds": 3,
        # No gateway (no worker to front); slow background jobs: three daemons share two cores with the test.
        "hosttune_daemon_settings": {"gateway": {"enabled": False}, "telemetry_interval_s": 30,
                                     "controller_interval_s": 60},
    }
    (inv / "group_vars/hosttune.yml").write_text(yaml.safe_dump(group_vars))
    return inv


def play(fleet: Fleet, inventory: Path, work: Path, playbook: str, *args: str) -> PlaybookRun:
    return run_playbook(fleet, ANSIBLE / playbook, inventory / "hosts.ini", work / "ansible", list(args))


def host_value(fleet: Fleet, name: str, argv: list[str]) -> str:
    return fleet.ssh(fleet.host(name), argv).stdout.strip()


def somaxconn(fleet: Fleet, name: str) -> int:
    return int(host_value(fleet, name, ["sysctl", "-n", "net.core.somaxconn"]))


def configured_policy(fleet: Fleet, name: str) -> str:
    config = yaml.safe_load(host_value(fleet, name, ["cat", "/etc/hosttune/daemon.yaml"]))
    return Path(config["policy"]).stem


def applied_and_held(fleet: Fleet, name: str) -> str:
    """`hosttune verify` on the host: exit 0 (nothing drifted) and the name of the policy its journal applied."""
    proc = fleet.ssh(fleet.host(name), ["/opt/hosttune/venv/bin/hosttune", "verify", "--json"], check=False)
    assert proc.returncode == 0, f"{name}: verify exit {proc.returncode}: {proc.stdout}{proc.stderr}"
    policy: str = json.loads(proc.stdout)["policy"]
    return policy


def assert_ok(run: PlaybookRun, hosts: list[str]) -> None:
    assert run.returncode == 0, run.tail()
    assert sorted(run.recap) == sorted(hosts), run.tail()
    for host, counts in run.recap.items():
        assert counts["failed"] == 0 and counts["unreachable"] == 0, f"{host}: {counts}\n{run.tail()}"


class TestFleet:
    """One fleet, in order. Each step asserts what the host really looks like, not only Ansible's summary."""

    HOSTS = ["h1", "h2", "h3"]

    def test_check_mode_on_fresh_hosts_reports_changes_and_writes_nothing(
            self, fleet: Fleet, inventory: Path, work: Path) -> None:
        run = play(fleet, inventory, work, "site.yml", "--check", "--diff")
        assert_ok(run, self.HOSTS)
        for host in self.HOSTS:
            assert run.recap[host]["changed"] > 0, run.tail()
            left = fleet.ssh(fleet.host(host), ["ls", "-d", "/opt/hosttune", "/etc/hosttune",
                                                "/etc/systemd/system/hosttune.service"], check=False)
            assert left.stdout.strip() == "", f"check mode wrote to {host}: {left.stdout}"
            assert somaxconn(fleet, host) != POLICY_A

    def test_site_converges_every_host(self, fleet: Fleet, inventory: Path, work: Path) -> None:
        before = {h: somaxconn(fleet, h) for h in self.HOSTS}
        run = play(fleet, inventory, work, "site.yml")
        assert_ok(run, self.HOSTS)
        for host in self.HOSTS:
            assert run.recap[host]["changed"] > 0
            assert before[host] != POLICY_A
            assert somaxconn(fleet, host) == POLICY_A, f"{host} does not run fleet-a"
            assert host_value(fleet, host, ["systemctl", "is-active", "hosttune"]) == "active"
            assert host_value(fleet, host, ["systemctl", "is-enabled", "hosttune"]) == "enabled"
            assert configured_policy(fleet, host) == "fleet-a"
            mode = host_value(fleet, host, ["stat", "-c", "%a", "/var/lib/hosttune/api.token"])
            assert mode == "600", f"{host}: token mode {mode}"
            assert applied_and_held(fleet, host) == "fleet-a"

    def test_second_run_changes_nothing(self, fleet: Fleet, inventory: Path, work: Path) -> None:
        pids = {h: host_value(fleet, h, ["systemctl", "show", "-P", "MainPID", "hosttune"]) for h in self.HOSTS}
        run = play(fleet, inventory, work, "site.yml")
        assert_ok(run, self.HOSTS)
        for host in self.HOSTS:
            assert run.recap[host]["changed"] == 0, f"{host} not idempotent:\n{run.tail()}"
            # Nothing restarted the daemon behind Ansible's back either.
            assert host_value(fleet, host, ["systemctl", "show", "-P", "MainPID", "hosttune"]) == pids[host]

    def test_check_mode_shows_a_policy_change_without_making_it(
            self, fleet: Fleet, inventory: Path, work: Path) -> None:
        run = play(fleet, inventory, work, "site.yml", "--check", "--diff", "-e", "hosttune_policy=fleet-b")
        assert_ok(run, self.HOSTS)
        # The plan's diff names the tunable with the host's value and the policy's.
        assert re.search(rf"-\s*sysctl: net\.core\.somaxconn = {POLICY_A}", run.stdout), run.tail()
        assert re.search(rf"\+\s*sysctl: net\.core\.somaxconn = {POLICY_B}", run.stdout), run.tail()
        # Reboot contract: the boot parameter is reported per host, is not a diff line, and nothing reboots.
        assert "hosttune_fleet_test" not in "".join(re.findall(r"^[-+].*$", run.stdout, re.M)), run.tail()
        reboot_task = run.stdout.split("TASK [hosttune : Reboot for the kernel command line", 1)[1]
        reboot_task = reboot_task.split("TASK [", 1)[0]
        for host in self.HOSTS:
            assert f"{host} needs a reboot for fleet-b" in run.stdout, run.tail()
            assert f"skipping: [{host}]" in reboot_task
            assert run.recap[host]["changed"] > 0
            assert somaxconn(fleet, host) == POLICY_A
            assert configured_policy(fleet, host) == "fleet-a"

    def test_rollout_stops_at_the_host_that_fails_its_health_gate(
            self, fleet: Fleet, inventory: Path, work: Path) -> None:
        h2 = fleet.host("h2")
        fleet.ssh(h2, ["systemd-run", "--unit=fleet-fighter", "--quiet", "/usr/bin/python3", "-c", FIGHTER])
        try:
            run = play(fleet, inventory, work, "rollout.yml", "-e", "hosttune_policy=fleet-b",
                       "-e", '{"hosttune_rollout_serial": 1, "hosttune_rollout_max_fail_percentage": 0}')
        finally:
            fleet.ssh(h2, ["systemctl", "stop", "fleet-fighter"], check=False)
        assert run.returncode != 0, run.tail()
        # Batch 1 (h1) passed its gate and runs the new policy.
        assert run.recap["h1"]["failed"] == 0, run.tail()
        assert somaxconn(fleet, "h1") == POLICY_B
        assert configured_policy(fleet, "h1") == "fleet-b"
        # Batch 2 (h2) drifted after the apply, failed verify and went back to its previous policy.
        assert run.recap["h2"]["failed"] == 1, run.tail()
        assert "health gate failed on h2" in run.stdout
        assert "drift" in run.stdout
        assert configured_policy(fleet, "h2") == "fleet-a"
        # Batch 3 (h3) was never reached: untouched, still on the previous policy and verifying clean.
        assert run.recap.get("h3", {}).get("ok", 0) == 0, run.tail()
        assert somaxconn(fleet, "h3") == POLICY_A
        assert configured_policy(fleet, "h3") == "fleet-a"
        assert applied_and_held(fleet, "h3") == "fleet-a"
