"""Which sysctls a policy may set (agent/policy/sysctl_rules.py): an allow-list of namespaces, a deny-list that
nothing lifts, and value shapes. Checked at load (file:line) and again by the tuner at plan time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from agent.errors import InputError
from agent.hostfs import HostPaths
from agent.policy.loader import REPO_POLICIES, load_policy
from agent.policy.model import Policy
from agent.policy.sysctl_rules import ALLOWED, DENIED, sysctl_constraint, sysctl_entry_problem, sysctl_key_problem
from agent.tuners.sysctl import SysctlTuner

# one key per family of the deny-list, several of them inside an allowed namespace (vm.*, net.core.*)
DENIED_KEYS = ["kernel.core_pattern", "kernel.core_uses_pid", "kernel.core_pipe_limit", "fs.suid_dumpable",
               "kernel.modprobe", "kernel.poweroff_cmd", "kernel.usermodehelper.bset", "kernel.hotplug",
               "fs.binfmt_misc.register", "kernel.kexec_load_disabled", "kernel.modules_disabled",
               "kernel.unprivileged_bpf_disabled", "net.core.bpf_jit_harden", "kernel.yama.ptrace_scope",
               "kernel.randomize_va_space", "vm.mmap_rnd_bits", "vm.legacy_va_layout", "vm.mmap_min_addr",
               "vm.unprivileged_userfaultfd",
               "kernel.kptr_restrict", "kernel.dmesg_restrict", "kernel.perf_event_paranoid",
               "kernel.unprivileged_userns_clone", "user.max_user_namespaces", "kernel.io_uring_disabled",
               "kernel.sysrq", "kernel.ctrl-alt-del", "kernel.cad_pid", "kernel.panic", "kernel.panic_on_oops",
               "kernel.softlockup_panic", "vm.panic_on_oom", "fs.protected_symlinks", "fs.protected_regular",
               "dev.tty.ldisc_autoload", "net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding",
               "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.accept_redirects",
               "net.ipv4.ip_unprivileged_port_start", "net.ipv4.ping_group_range", "vm.nr_hugepages",
               "vm.nr_hugepages_mempolicy", "vm.nr_overcommit_hugepages", "vm.hugetlb_shm_group", "vm.drop_caches",
               "vm.memory_failure_recovery", "vm.compact_memory", "vm.stat_refresh",
               "KERNEL.CORE_PATTERN".lower(), "kernel.Core_pattern"]
# keys tests, fixtures and docs use for real tuning
ALLOWED_KEYS = ["vm.swappiness", "vm.max_map_count", "vm.dirty_ratio", "vm.dirty_background_ratio",
                "vm.zone_reclaim_mode", "vm.min_free_kbytes", "vm.overcommit_memory", "vm.vfs_cache_pressure",
                "kernel.numa_balancing", "kernel.sched_autogroup_enabled", "kernel.timer_migration",
                "kernel.nmi_watchdog", "kernel.pid_max", "kernel.threads-max", "kernel.shmmax", "kernel.shmall",
                "net.core.somaxconn", "net.core.rmem_max", "net.core.default_qdisc", "net.core.netdev_max_backlog",
                "net.ipv4.tcp_rmem", "net.ipv4.tcp_congestion_control", "net.ipv4.tcp_tw_reuse",
                "net.ipv4.ip_local_port_range", "fs.file-max", "fs.nr_open", "fs.aio-max-nr",
                "fs.inotify.max_user_watches"]


def shipped_sysctls() -> list[tuple[str, object]]:
    out = []
    for path in sorted(REPO_POLICIES.glob("*.yaml")):
        for key, value in (yaml.safe_load(path.read_text()).get("sysctl") or {}).items():
            out.append((key, value["value"] if isinstance(value, dict) else value))
    return out


@pytest.mark.parametrize("key", DENIED_KEYS)
def test_denied_keys_are_refused_with_the_reason(key: str) -> None:
    problem = sysctl_key_problem(key)
    assert problem is not None and "refused, no policy can set it" in problem and key in problem


@pytest.mark.parametrize("key", ALLOWED_KEYS)
def test_tuning_keys_are_allowed(key: str) -> None:
    assert sysctl_key_problem(key) is None


@pytest.mark.parametrize(("key", "value"), shipped_sysctls())
def test_every_shipped_policy_sysctl_is_allowed(key: str, value: object) -> None:
    assert sysctl_entry_problem(key, value) is None


@pytest.mark.parametrize("key", ["kernel.hostname", "kernel.printk", "debug.exception-trace", "abi.vsyscall32",
                                 "net.ipv4.icmp_echo_ignore_all", "fs.pipe-max-size", "crypto.fips_enabled"])
def test_keys_outside_the_allowed_namespaces_are_refused(key: str) -> None:
    problem = sysctl_key_problem(key)
    assert problem is not None and "not one hosttune tunes" in problem and "vm.*" in problem


def test_no_allowed_pattern_is_empty_and_every_rule_has_a_reason() -> None:
    assert all(pattern and why for pattern, why in (*ALLOWED, *DENIED))


@pytest.mark.parametrize("value", ["|/bin/sh -c id", "1\n2", "60\n", "$(reboot)", "`id`", "a;b", "a\"b", "caf\u00e9",
                                   "", " ", "x" * 300, ">=1; rm", 1 << 64, -(1 << 63) - 1, ">=99999999999999999999999"])
def test_bad_values_are_refused(value: object) -> None:
    problem = sysctl_entry_problem("net.ipv4.tcp_rmem", value)
    assert problem is not None and problem.startswith("net.ipv4.tcp_rmem:")


@pytest.mark.parametrize("value", ["4096 87380 6291456", "32768\t60999", "bbr", "fq_codel", ">=4096", "<= 3", 0, -1,
                                   (1 << 64) - 1])
def test_real_values_are_accepted(value: object) -> None:
    assert sysctl_entry_problem("net.ipv4.tcp_rmem", value) is None


def test_denied_key_in_a_policy_file_names_file_line_key_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nsysctl:\n  vm.swappiness: 1\n  kernel.core_pattern: '|/bin/sh -c id'\n")
    with pytest.raises(InputError) as e:
        load_policy(path, None, search_path=[])
    assert (e.value.path, e.value.line, e.value.field) == (str(path), 4, "sysctl.kernel.core_pattern")
    assert "kernel.core_pattern is refused" in e.value.message and "runs as root" in e.value.message
    assert e.value.exit_code == 2


@pytest.mark.parametrize("key", ["kernel.core_pattern", "kernel.modprobe", "fs.suid_dumpable", "vm.nr_hugepages"])
def test_tuner_refuses_denied_keys_even_when_the_model_was_bypassed(host: HostPaths, key: str) -> None:
    path = host.sysctl(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("core\n")
    before = path.read_text()
    policy = Policy.model_construct(name="t", sysctl={key: "|/bin/sh"})
    with pytest.raises(InputError, match="refused") as e:
        SysctlTuner().plan(policy, None, host)
    assert e.value.field == f"sysctl.{key}" and path.read_text() == before


def test_tuner_refuses_an_allowed_name_that_resolves_to_a_denied_key(host: HostPaths) -> None:
    target = host.proc("sys/kernel/core_pattern")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("core\n")
    os.symlink("../kernel/core_pattern", host.proc("sys/vm/innocent"))
    policy = Policy.model_construct(name="t", sysctl={"vm.innocent": 5})
    with pytest.raises(InputError, match=r"resolves to kernel\.core_pattern"):
        SysctlTuner().plan(policy, None, host)
    assert target.read_text() == "core\n"


def test_docs_list_every_rule() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "policies.md").read_text(encoding="utf-8")
    for pattern, _ in (*ALLOWED, *DENIED):
        assert f"| `{pattern}` |" in docs, f"docs/policies.md does not list {pattern}"


@pytest.mark.host("server")
def test_min_free_kbytes_is_capped_at_a_share_of_memory(host: HostPaths) -> None:
    # the `server` fixture has 251.6 GiB: 5% is 13192806 kB
    host.proc("sys/vm/min_free_kbytes").write_text("67584\n")
    ok = SysctlTuner().plan(Policy(name="t", sysctl={"vm.min_free_kbytes": 1048576}), None, host)
    assert ok[0].value == "1048576"
    for value in (20_000_000, ">=20000000"):
        with pytest.raises(InputError, match=r"more than 5% of the host's 251\.6 GiB") as e:
            SysctlTuner().plan(Policy(name="t", sysctl={"vm.min_free_kbytes": value}), None, host)
        assert e.value.field == "sysctl.vm.min_free_kbytes"
    assert host.proc("sys/vm/min_free_kbytes").read_text() == "67584\n"


@pytest.mark.parametrize(("value", "expected"), [
    (">=1048576", ("ge", "1048576")), ("<=10", ("le", "10")), (">= \t-5", ("ge", "-5")), (">=007", ("ge", "007")),
    ("1048576", None), (">=", None), (">=1 ", None), ("=>1", None), (">=1k", None), ("", None),
])
def test_sysctl_constraint_is_the_one_reading_of_ge_and_le(value: str, expected: tuple[str, str] | None) -> None:
    assert sysctl_constraint(value) == expected
    if value.startswith((">=", "<=")):  # the model refuses exactly the constraints this cannot read
        assert (sysctl_entry_problem("vm.max_map_count", value) is None) == (expected is not None)
