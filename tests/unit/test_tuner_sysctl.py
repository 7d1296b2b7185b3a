"""sysctl tuner on a fixture tree: key validation against procfs, exact values, >=/<= constraints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import InputError
from agent.hostfs import HostPaths
from agent.policy.model import Policy
from agent.tuners.sysctl import SysctlTuner, parse_desired, sysctl_path


def plan(paths: HostPaths, sysctl: dict[str, int | str]) -> dict[str, tuple[str, str | None, str | None]]:
    policy = Policy.model_construct(name="t", sysctl=sysctl)
    return {c.target: (c.action, c.current, c.value) for c in SysctlTuner().plan(policy, None, paths)}


def test_exact_value_change_and_ok(host: HostPaths) -> None:
    got = plan(host, {"vm.swappiness": 1, "vm.dirty_ratio": 20})
    assert got["vm.swappiness"] == ("change", "60", "1")
    assert got["vm.dirty_ratio"] == ("ok", "20", "20")


@pytest.mark.host("server")
def test_at_least_never_lowers_and_raises_when_below(host: HostPaths) -> None:
    got = plan(host, {"vm.max_map_count": ">=1048576", "net.core.somaxconn": ">=1024"})
    assert got["vm.max_map_count"] == ("change", "65530", "1048576")
    # 4096 is above the floor someone else set: left alone
    assert got["net.core.somaxconn"] == ("ok", "4096", "1024")


def test_at_most_never_raises(host: HostPaths) -> None:
    got = plan(host, {"vm.swappiness": "<=80", "vm.dirty_ratio": "<=10"})
    assert got["vm.swappiness"][0] == "ok"
    assert got["vm.dirty_ratio"] == ("change", "20", "10")


def test_multi_value_compares_whitespace_normalised(host: HostPaths) -> None:
    # the file holds "32768\t60999\n"
    assert plan(host, {"net.ipv4.ip_local_port_range": "32768   60999"})["net.ipv4.ip_local_port_range"][0] == "ok"
    assert plan(host, {"net.ipv4.ip_local_port_range": "1024 65535"})["net.ipv4.ip_local_port_range"][0] == "change"


@pytest.mark.parametrize("key", ["../../etc/x", "vm/swappiness", "vm..swappiness", "VM.x", "vm"])
def test_malformed_keys_are_input_errors(host: HostPaths, key: str) -> None:
    with pytest.raises(InputError) as e:
        sysctl_path(host, key, f"sysctl.{key}")
    assert e.value.field == f"sysctl.{key}"


def test_missing_key_names_field(host: HostPaths) -> None:
    with pytest.raises(InputError, match=r"no sysctl 'vm\.nosuch'") as e:
        plan(host, {"vm.nosuch": 1})
    assert e.value.field == "sysctl.vm.nosuch"


def test_read_only_and_directory_keys_refused(host: HostPaths) -> None:
    host.proc("sys/vm/swappiness").chmod(0o444)
    with pytest.raises(InputError, match="read-only"):
        plan(host, {"vm.swappiness": "7"})
    host.proc("sys/net/core/somedir").mkdir()
    with pytest.raises(InputError, match="directory"):
        plan(host, {"net.core.somedir": 1})


def test_symlink_out_of_procfs_is_refused(host: HostPaths, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("1\n")
    os.symlink(outside, host.proc("sys/vm/evil"))
    with pytest.raises(InputError, match="outside"):
        plan(host, {"vm.evil": 0})
    assert outside.read_text() == "1\n"


def test_constraint_on_non_numeric_sysctl(host: HostPaths) -> None:
    host.proc("sys/net/core/default_qdisc").write_text("fq_codel\n")
    with pytest.raises(InputError, match="numeric"):
        plan(host, {"net.core.default_qdisc": ">=1"})


@pytest.mark.parametrize(("desired", "expected"), [
    (5, ("5", "eq")), (">=10", ("10", "ge")), ("<= 3", ("3", "le")), (" 1  2 ", ("1 2", "eq")), (-1, ("-1", "eq"))])
def test_parse_desired(desired: int | str, expected: tuple[str, str]) -> None:
    assert parse_desired("k", desired, "f") == expected


def test_bad_constraint_and_bool() -> None:
    with pytest.raises(InputError):
        parse_desired("k", ">=x", "f")
    with pytest.raises(InputError):
        parse_desired("k", True, "f")
