"""Open a file as another user for one call: this thread's filesystem uid/gid (setfsuid/setfsgid), then back.

Why: the daemon (root, but without CAP_SYS_PTRACE under its unit) cannot open the worker's /proc/PID/smaps_rollup:
procfs asks ptrace_may_access(PTRACE_MODE_READ_FSCREDS), which passes for a caller whose *filesystem* uid and gid
equal the target's uids and gids, or one holding CAP_SYS_PTRACE. Under `ProtectProc=invisible` the same check hides
/proc/PID itself. Taking the worker's fsuid/fsgid for the open needs only CAP_SETUID/CAP_SETGID, which the unit
already grants to drop to the worker user; CAP_SYS_PTRACE would let the daemon attach to any process.

fsuid and fsgid belong to the calling thread (glibc does not broadcast setfsuid to other threads as it does
setuid), so the daemon's other threads keep root's identity meanwhile. Changing fsuid away from 0 drops the
file-system capabilities (CAP_DAC_OVERRIDE, ...) from this thread's effective set; setting it back restores them.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

from agent.errors import HostError

_UNCHANGED = 0xFFFFFFFF  # an invalid id: setfsuid(-1) changes nothing and returns the current fsuid
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setfsuid.argtypes = [ctypes.c_uint32]
_libc.setfsuid.restype = ctypes.c_int
_libc.setfsgid.argtypes = [ctypes.c_uint32]
_libc.setfsgid.restype = ctypes.c_int


def current_fs_ids() -> tuple[int, int]:
    """(fsuid, fsgid) of the calling thread."""
    return _libc.setfsuid(_UNCHANGED), _libc.setfsgid(_UNCHANGED)


@contextlib.contextmanager
def fs_identity(uid: int, gid: int) -> Iterator[None]:
    """Inside the block this thread opens files as uid:gid (nothing changes when those are ours already).
    HostError when the kernel refused the switch (no CAP_SETUID/CAP_SETGID): nothing was changed then."""
    if not (0 <= uid < _UNCHANGED and 0 <= gid < _UNCHANGED):
        raise HostError(f"uid {uid} / gid {gid} out of range")
    old_uid, old_gid = current_fs_ids()
    if (old_uid, old_gid) == (uid, gid):
        yield
        return
    try:  # inside: whatever happens after the first switch, finally puts the original identity back
        _libc.setfsgid(gid)
        _libc.setfsuid(uid)
        if current_fs_ids() != (uid, gid):
            raise HostError(f"cannot take filesystem identity {uid}:{gid} (needs CAP_SETUID and CAP_SETGID)")
        yield
    finally:
        _libc.setfsuid(old_uid)
        _libc.setfsgid(old_gid)
        if current_fs_ids() != (old_uid, old_gid):  # can't happen (same capabilities as the switch); fails safe:
            raise HostError(f"cannot restore filesystem identity {old_uid}:{old_gid}")  # less access, not more
