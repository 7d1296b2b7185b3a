"""Exec shim: bind this process's CPUs and memory, then exec the worker (same PID, policy inherited).

`python -m agent.worker.bindexec [--cpus 0-3] [--membind 1] [--uid U --gid G] [--pdeathsig 15 --parent PID]
 -- ARGV...`

Why a shim and not preexec_fn: the supervisor spawns from a thread, and preexec_fn is unsafe with threads (the
forked child may deadlock on a lock another thread held). CPU affinity and the memory policy survive execve, so
binding here and exec'ing is equivalent to numactl --physcpubind/--membind, for hosts without numactl.
--pdeathsig asks the kernel to signal the worker when the supervising thread dies (even by SIGKILL), so a
crashed hosttune never leaves an orphaned llama-server holding the port and the memory. --uid/--gid drop to
the worker user after binding (agent/worker/privdrop.py says why): no_new_privs, ambient and bounding capability
sets cleared, no supplementary groups, then setresgid/setresuid, which empties the permitted and effective sets.
The death signal is set after the drop: the kernel clears it when the credentials change. Imports stay minimal:
this runs before every worker start.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys

MPOL_BIND = 2
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_MAX_PROBE = 64  # capability numbers are probed until the kernel says EINVAL (no /proc read needed)
SYS_SET_MEMPOLICY = {"x86_64": 238, "aarch64": 237, "ppc64le": 261, "s390x": 237, "riscv64": 237}
EXIT_BIND_FAILED = 126


def parse_cpus(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.update(range(int(lo), int(hi) + 1))
        elif part:
            cpus.add(int(part))
    return cpus


def set_membind(node: int) -> None:
    """set_mempolicy(MPOL_BIND, {node}) through the raw syscall (no libnuma needed)."""
    number = SYS_SET_MEMPOLICY.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"set_mempolicy syscall number unknown on {platform.machine()}")
    bits = 8 * ctypes.sizeof(ctypes.c_ulong)
    words = node // bits + 1
    mask = (ctypes.c_ulong * words)()
    mask[node // bits] = 1 << (node % bits)
    libc = ctypes.CDLL(None, use_errno=True)
    # maxnode counts one past the mask's bits: the kernel reads maxnode - 1 bits.
    if libc.syscall(number, MPOL_BIND, mask, ctypes.c_ulong(words * bits + 1)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"set_mempolicy(MPOL_BIND, node {node}): {os.strerror(err)}")


def set_parent_death_signal(sig: int, parent: int | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)  # the supervisor died before the prctl took effect


def _prctl(libc: ctypes.CDLL, option: int, arg: int) -> int:
    if libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        return ctypes.get_errno() or errno.EPERM
    return 0


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid/gid for good, with no capabilities and no way to gain any through execve."""
    if uid == 0 or gid == 0:
        raise OSError(errno.EPERM, "refusing to run the worker as root")
    libc = ctypes.CDLL(None, use_errno=True)
    for option, arg, what in ((PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS"),
                              (PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "PR_CAP_AMBIENT_CLEAR_ALL")):
        err = _prctl(libc, option, arg)
        if err:
            raise OSError(err, f"prctl({what}): {os.strerror(err)}")
    for cap in range(CAP_MAX_PROBE):
        # EPERM: no CAP_SETPCAP (the unit leaves it out of the bounding set); no_new_privs and the uid change
        # already keep the worker from holding or gaining any capability. EINVAL: past the last capability.
        if _prctl(libc, PR_CAPBSET_DROP, cap) in (errno.EINVAL, errno.EPERM):
            break
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise OSError(errno.EPERM, "the privilege drop did not hold (setuid(0) succeeded)")


INT_OPTIONS = ("--membind", "--pdeathsig", "--parent", "--uid", "--gid")


def main(argv: list[str]) -> int:
    values: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i] != "--":
        if argv[i] not in ("--cpus", *INT_OPTIONS) or i + 1 >= len(argv):
            print(f"bindexec: unknown option or missing value: {argv[i]}", file=sys.stderr)
            return 2
        values[argv[i]] = argv[i + 1]
        i += 2
    cpus = parse_cpus(values["--cpus"]) if "--cpus" in values else None
    node, death_signal, parent, uid, gid = (int(values[o]) if o in values else None for o in INT_OPTIONS)
    command = argv[i + 1:]
    if not command:
        print("bindexec: no command after --", file=sys.stderr)
        return 2
    if (uid is None) != (gid is None):
        print("bindexec: --uid and --gid go together", file=sys.stderr)
        return 2
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)
        if node is not None:
            set_membind(node)
    except OSError as e:
        print(f"bindexec: cannot bind (cpus {sorted(cpus or [])}, node {node}): {e}", file=sys.stderr)
        return EXIT_BIND_FAILED
    try:
        if uid is not None and gid is not None:
            drop_privileges(uid, gid)
        if death_signal is not None:  # after the drop: a credential change clears the death signal
            set_parent_death_signal(death_signal, parent)
    except OSError as e:
        print(f"bindexec: cannot drop privileges to uid {uid} gid {gid}: {e}", file=sys.stderr)
        return EXIT_BIND_FAILED
    try:
        os.execvp(command[0], command)
    except OSError as e:
        print(f"bindexec: cannot exec {command[0]}: {e.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
