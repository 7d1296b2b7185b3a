"""Exec shim: bind this process's CPUs and memory, then exec the worker (same PID, policy inherited).

`python -m agent.worker.bindexec [--cpus 0-3] [--membind 1] [--pdeathsig 15 --parent PID] -- ARGV...`

Why a shim and not preexec_fn: the supervisor spawns from a thread, and preexec_fn is unsafe with threads (the
forked child may deadlock on a lock another thread held). CPU affinity and the memory policy survive execve, so
binding here and exec'ing is equivalent to numactl --physcpubind/--membind, for hosts without numactl.
--pdeathsig asks the kernel to signal the worker when the supervising thread dies (even by SIGKILL), so a
crashed hosttune never leaves an orphaned llama-server holding the port and the memory. Imports stay minimal:
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


def main(argv: list[str]) -> int:
    cpus: set[int] | None = None
    node: int | None = None
    death_signal: int | None = None
    parent: int | None = None
    i = 0
    while i < len(argv) and argv[i] != "--":
        if argv[i] == "--cpus":
            cpus = parse_cpus(argv[i + 1])
            i += 2
        elif argv[i] == "--membind":
            node = int(argv[i + 1])
            i += 2
        elif argv[i] == "--pdeathsig":
            death_signal = int(argv[i + 1])
            i += 2
        elif argv[i] == "--parent":
            parent = int(argv[i + 1])
            i += 2
        else:
            print(f"bindexec: unknown option {argv[i]}", file=sys.stderr)
            return 2
    command = argv[i + 1:]
    if not command:
        print("bindexec: no command after --", file=sys.stderr)
        return 2
    try:
        if death_signal is not None:
            set_parent_death_signal(death_signal, parent)
        if cpus:
            os.sched_setaffinity(0, cpus)
        if node is not None:
            set_membind(node)
    except OSError as e:
        print(f"bindexec: cannot bind (cpus {sorted(cpus or [])}, node {node}): {e}", file=sys.stderr)
        return EXIT_BIND_FAILED
    try:
        os.execvp(command[0], command)
    except OSError as e:
        print(f"bindexec: cannot exec {command[0]}: {e.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
