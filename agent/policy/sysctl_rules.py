"""Which sysctls a policy may set, and what a value may look like: the one home of the rule.

The policy model (load time, with the policy's file:line) and the sysctl tuner (plan time, also for policies built
in code) both ask `sysctl_entry_problem`. A key must pass three gates, in this order:

1. shape: a dotted name under /proc/sys (no `..`, no `/`);
2. DENIED: keys that weaken a security boundary (make the kernel run a program as root, leak root memory, turn
   off a hardening switch, route packets) or that bypass a check elsewhere in hosttune. Nothing lifts this list;
3. ALLOWED: the namespaces inference tuning needs. Everything else is refused: an allow-list, not a guess of
   what might be dangerous.

docs/policies.md ("Which sysctls") lists both lists with these reasons; keep the two in step.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Literal

SYSCTL_KEY_RE = re.compile(r"[a-z0-9_]+(\.[A-Za-z0-9_\-]+)+")  # fullmatch: `$` would let a final newline in
SYSCTL_CONSTRAINT_RE = re.compile(r"(>=|<=)[ \t]*(-?[0-9]+)")
# One value, or several whitespace-separated ones ("4096 87380 6291456", "32768 60999"); each a plain token.
SYSCTL_VALUE_RE = re.compile(r"[ \t]*[A-Za-z0-9_.+\-]+([ \t]+[A-Za-z0-9_.+\-]+)*[ \t]*")
MAX_KEY_LEN = 128
MAX_VALUE_LEN = 256
# The widest sysctl integers are unsigned 64-bit (kernel.shmmax) or signed 64-bit.
MIN_INT = -(1 << 63)
MAX_INT = (1 << 64) - 1

# (fnmatch pattern, why): `*` also matches dots. Matched on the lower-cased key.
DENIED: tuple[tuple[str, str], ...] = (
    ("kernel.core_*", "core dumps: a '|program' pattern runs as root outside hosttune's sandbox, and dump files "
                      "hold process memory (core_uses_pid and the rest of the family go with it)"),
    ("fs.suid_dumpable", "lets setuid processes dump core, leaking root memory"),
    ("kernel.modprobe", "the program the kernel runs as root to load modules"),
    ("kernel.poweroff_cmd", "a program the kernel runs as root"),
    ("kernel.usermodehelper.*", "limits on the programs the kernel runs as root"),
    ("kernel.hotplug", "a program the kernel runs as root on hotplug events"),
    ("fs.binfmt_misc.*", "registers interpreters the kernel runs for matching files (with root credentials "
                         "for setuid files)"),
    ("kernel.kexec_load_disabled", "a one-way lockdown switch (kexec)"),
    ("kernel.modules_disabled", "a one-way lockdown switch (module loading)"),
    ("kernel.unprivileged_bpf_disabled", "eBPF hardening"),
    ("net.core.bpf_jit_*", "eBPF JIT hardening"),
    ("kernel.yama.*", "ptrace restrictions between processes"),
    ("kernel.randomize_va_space", "address space layout randomisation"),
    ("vm.mmap_rnd_*", "address space layout randomisation"),
    ("vm.legacy_va_layout", "the legacy mmap layout, with weaker address space randomisation"),
    ("vm.mmap_min_addr", "protects against kernel NULL-pointer exploits"),
    ("vm.unprivileged_userfaultfd", "a kernel exploit primitive for unprivileged users"),
    ("kernel.kptr_restrict", "hides kernel addresses from users"),
    ("kernel.dmesg_restrict", "hides the kernel log from users"),
    ("kernel.perf_event_paranoid", "limits what users may observe with perf"),
    ("kernel.unprivileged_userns_clone", "user namespaces for unprivileged users"),
    ("user.*", "namespace limits that confine users and sandboxes"),
    ("kernel.io_uring_disabled", "io_uring attack surface"),
    ("kernel.sysrq", "magic SysRq: reboot, crash or kill everything from a keyboard or /proc"),
    ("kernel.ctrl-alt-del", "what Ctrl-Alt-Del does"),
    ("kernel.cad_pid", "which process receives Ctrl-Alt-Del"),
    ("kernel.*panic*", "turns a fault into a crash or reboot of the whole host"),
    ("vm.panic_on_oom", "turns an out-of-memory event into a crash of the whole host"),
    ("vm.memory_failure_recovery", "0 turns a corrupted memory page into a crash of the whole host"),
    ("fs.protected_*", "symlink, hardlink, FIFO and regular-file protections in shared directories"),
    ("dev.tty.*", "terminal line-discipline autoload and input injection"),
    ("net.ipv4.ip_forward", "routes packets between networks through this host"),
    ("net.*.forwarding", "routes packets between networks through this host"),
    ("net.ipv4.conf.*", "per-interface routing, redirects and source checks"),
    ("net.ipv6.conf.*", "per-interface routing, redirects and source checks"),
    ("net.ipv4.ip_unprivileged_port_start", "lets any user bind privileged ports"),
    ("net.ipv4.ping_group_range", "which groups may open ICMP sockets"),
    ("vm.nr_hugepages*", "hugepage pools: set them in the `hugepages:` section, which checks them against memory"),
    ("vm.nr_overcommit_hugepages", "surplus hugepages are taken from memory on demand, unchecked"),
    ("vm.hugetlb_shm_group", "grants a group hugetlb shared memory"),
    ("vm.drop_caches", "an action, not a setting: nothing to keep or revert"),
    ("vm.compact_memory", "an action, not a setting: nothing to keep or revert"),
    ("vm.stat_refresh", "an action, not a setting: nothing to keep or revert"),
)

# (fnmatch pattern, why hosttune may set it)
ALLOWED: tuple[tuple[str, str], ...] = (
    ("vm.*", "memory management: swapping, dirty writeback, map counts, reclaim and compaction"),
    ("kernel.numa_balancing*", "automatic NUMA page migration, which fights explicit worker placement"),
    ("kernel.sched_*", "CPU scheduler latency and migration knobs"),
    ("kernel.timer_migration", "timer placement, a latency knob"),
    ("kernel.nmi_watchdog", "periodic NMIs that interrupt compute, a latency knob"),
    ("kernel.pid_max", "room for the many threads of an inference worker"),
    ("kernel.threads-max", "room for the many threads of an inference worker"),
    ("kernel.shm*", "System V shared memory limits for multi-process (torch) workers"),
    ("net.core.*", "socket buffers, listen backlog and queueing discipline for the gateway and worker"),
    ("net.ipv4.tcp_*", "TCP buffers, backlog and keepalive for the gateway and worker"),
    ("net.ipv4.ip_local_port_range", "ephemeral ports for many gateway-to-worker connections"),
    ("fs.file-max", "open file limits for many connections and model shards"),
    ("fs.nr_open", "open file limits for many connections and model shards"),
    ("fs.aio-max-nr", "asynchronous I/O contexts for model loading"),
    ("fs.inotify.*", "inotify limits"),
)


# Allowed keys whose value is memory taken from everything else: key -> (largest share of MemTotal in %, why).
# Checked at plan time, when the host's memory is known.
MEMORY_SHARES: dict[str, tuple[float, str]] = {
    "vm.min_free_kbytes": (5.0, "the kernel keeps this much free: too much and it reclaims everything and the OOM "
                                "killer takes the rest"),
}


def denied_reason(key: str) -> str | None:
    lowered = key.lower()
    for pattern, why in DENIED:
        if fnmatch.fnmatchcase(lowered, pattern):
            return why
    return None


def allowed_reason(key: str) -> str | None:
    for pattern, why in ALLOWED:
        if fnmatch.fnmatchcase(key, pattern):
            return why
    return None


def sysctl_key_problem(key: str) -> str | None:
    """Why a policy may not set sysctl `key` (None when it may)."""
    if len(key) > MAX_KEY_LEN or ".." in key or "/" in key or "\\" in key or not SYSCTL_KEY_RE.fullmatch(key):
        return f"invalid sysctl key {key[:MAX_KEY_LEN]!r}: use dotted names like vm.swappiness"
    why = denied_reason(key)
    if why is not None:
        return f"sysctl {key} is refused, no policy can set it: {why}"
    if allowed_reason(key) is None:
        shown = ", ".join(pattern for pattern, _ in ALLOWED)
        return f"sysctl {key} is not one hosttune tunes (allowed: {shown}; see docs/policies.md)"
    return None


def sysctl_value_problem(key: str, value: object) -> str | None:
    """Why `value` is not a sysctl value (None when it is): an integer in 64-bit range, a '>=N'/'<=N'
    constraint, or whitespace-separated plain tokens ("4096 87380 6291456", "bbr")."""
    if isinstance(value, bool):
        return f"{key}: use 0/1, not a boolean"
    if isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            return f"{key}: {value} is outside the 64-bit range of a sysctl"
        return None
    if not isinstance(value, str):
        return f"{key}: expected an integer or a string"
    if value[:2] in (">=", "<="):
        constraint = sysctl_constraint(value)
        if constraint is None:
            return f"{key}: constraint must look like '>=123' or '<=123'"
        return sysctl_value_problem(key, int(constraint[1]))
    if len(value) > MAX_VALUE_LEN or not SYSCTL_VALUE_RE.fullmatch(value):
        # The value is written to a kernel file: a newline would write a second line, and no tunable hosttune
        # allows needs more than plain words and numbers.
        return (f"{key}: the value must be printable ASCII: numbers or words of letters, digits and _.+- "
                f"separated by spaces (at most {MAX_VALUE_LEN} characters)")
    return None


def sysctl_constraint(value: str) -> tuple[Literal["ge", "le"], str] | None:
    """("ge", bound) for '>=bound', ("le", bound) for '<=bound' (the bound as written), None for any other value."""
    match = SYSCTL_CONSTRAINT_RE.fullmatch(value)
    if match is None:
        return None
    return ("ge" if match.group(1) == ">=" else "le"), match.group(2)


def sysctl_entry_problem(key: str, value: object) -> str | None:
    """Why a policy's sysctl entry is unacceptable (None when it is fine)."""
    return sysctl_key_problem(key) or sysctl_value_problem(key, value)


def memory_share_problem(key: str, value: str, mem_total_bytes: int | None) -> str | None:
    """Why `value` (kB) of a MEMORY_SHARES key is too much memory for this host (None when it is fine)."""
    if key not in MEMORY_SHARES:
        return None
    pct, why = MEMORY_SHARES[key]
    try:
        kb = int(value)
    except ValueError:
        return f"{key}: expected a number of kB, not {value!r}"
    if not mem_total_bytes:
        return f"{key}: the host's memory size is unknown (no MemTotal in meminfo): cannot check {kb} kB against it"
    if kb * 1024 * 100 > mem_total_bytes * pct:
        return (f"{key}: {kb} kB is more than {pct:g}% of the host's {mem_total_bytes / (1 << 30):.1f} GiB of memory "
                f"({why})")
    return None
